"""Whether the request path reads from ``read_dsn``, and how far behind it is (issue 13).

With a ``read_dsn``, the store checks it once a second: first the primary's WAL
insert position (on ``dsn``), then how far the read target has replayed, and
the age of the last commit it replayed. Its lag is the age of the oldest WAL
it has not replayed yet, bounded from above two ways, and the tighter one
taken: the WAL it lacks was written after the last check that saw the
primary at or before its replay position, and after the last commit it
replayed. 0 when it has replayed every position seen (a server not in
recovery is current). The first bound alone is off by up to a check's
interval; the second alone grows without end on an idle primary (no commit
to replay) and jumps after a quiet spell; together they are neither.

A target that does not answer, or lags more than ``read_max_lag``, is out of
the read set: reads go to the primary until a check finds it answering and
caught up again. The fence (fence.py) still guards every read a target in the
set serves; the read set spares the round trips to a target that would fail
or be behind, and says what is in use (/readyz, ``ocspd_read_target_*``).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable

from ocspd.exceptions import OcspdError
from ocspd.store.connector import Connector

CHECK_SECONDS = 1.0
# Primary positions older than this many read_max_lag are forgotten: a target
# behind all of them is reported at least that far behind (and is out anyway).
HORIZON_LAGS = 4


class TargetState(enum.Enum):
    """Where a read target stands: in the read set, or out of it and why."""

    IN_USE = "in_use"
    LAGGING = "lagging"
    DOWN = "down"


class ReadTarget:
    """The state and lag of ``read_dsn``, from the checks (``observe``/``failed``)."""

    def __init__(self, max_lag: float) -> None:
        self.max_lag = max_lag
        self.state = TargetState.IN_USE  # until the first check says otherwise: reads are fenced anyway
        self.lag: float | None = 0.0  # seconds; None while it does not answer
        self.error = ""
        self._seen: deque[tuple[float, int]] = deque()  # (when, the primary's position then), oldest first

    @property
    def in_use(self) -> bool:
        return self.state is TargetState.IN_USE

    @property
    def remembered(self) -> int:
        """Primary positions held to judge the lag by (bounded by the horizon)."""
        return len(self._seen)

    def observe(
        self, now: float, primary_lsn: int | None, replay_lsn: int | None, replay_age: float | None = None
    ) -> None:
        """A check's result: the primary's position at ``now`` (None: not read), then the target's
        replay position (None: the target is not in recovery) and the age in seconds of the last
        commit it replayed (None: none yet)."""
        if primary_lsn is not None and (not self._seen or primary_lsn > self._seen[-1][1]):
            self._seen.append((now, primary_lsn))
        horizon = now - HORIZON_LAGS * self.max_lag
        while len(self._seen) > 1 and self._seen[1][0] <= horizon:
            self._seen.popleft()
        self.lag = 0.0 if replay_lsn is None else self._lag(now, replay_lsn, replay_age)
        self.error = ""
        self.state = TargetState.LAGGING if self.lag > self.max_lag else TargetState.IN_USE

    def _lag(self, now: float, replay_lsn: int, replay_age: float | None) -> float:
        if all(lsn <= replay_lsn for _, lsn in self._seen):
            return 0.0  # it has replayed every position seen
        replayed = [seen for seen, lsn in self._seen if lsn <= replay_lsn]
        # Behind every position remembered: at least as late as the oldest (and out, past the horizon).
        by_position = now - (replayed[-1] if replayed else self._seen[0][0])
        if replay_age is None or not replayed:
            return by_position
        return max(0.0, min(by_position, replay_age))

    def failed(self, error: str) -> None:
        """The target did not answer a check."""
        self.state, self.lag, self.error = TargetState.DOWN, None, error

    def describe(self) -> str:
        """One line for /readyz."""
        if self.state is TargetState.DOWN:
            return f"read_dsn: down ({self.error}); reads go to the primary"
        lag = f"lag {self.lag or 0.0:.1f}s"
        if self.state is TargetState.LAGGING:
            return f"read_dsn: out of the read set, {lag} > read_max_lag {self.max_lag:g}s; reads go to the primary"
        return f"read_dsn: in use, {lag} (read_max_lag {self.max_lag:g}s)"


async def check(target: ReadTarget, primary: Connector, reader: Connector, clock: Callable[[], float]) -> None:
    """One check of ``reader`` against ``primary`` (each within a second)."""
    primary_lsn = None
    try:
        async with primary.deadline(CHECK_SECONDS):
            rows = await primary.query("current_wal_lsn", {}, retry=False)
        primary_lsn = rows[0][0]
    except OcspdError:
        pass  # the primary's trouble is the request path's to report; the lag is judged on what was seen
    try:
        async with reader.deadline(CHECK_SECONDS):
            rows = await reader.query("replay_position", {}, retry=False)
    except OcspdError as exc:
        target.failed(str(exc))
        return
    target.observe(clock(), primary_lsn, rows[0][0], rows[0][1])


async def watch(
    target: ReadTarget,
    primary: Connector,
    reader: Connector,
    *,
    interval: float = CHECK_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Check ``reader`` every ``interval`` seconds, forever."""
    while True:
        await check(target, primary, reader, clock)
        await asyncio.sleep(interval)
