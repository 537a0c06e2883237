"""The WAL-position fence of reads from a hot standby (SPEC §3.10).

A standby (``[database] read_dsn``) replays the primary's WAL some time
behind it. A replica notified of a status change drops the key from memory;
if the next miss read the status from a standby that has not yet replayed
the change, it would sign and cache the old status, and no second
notification would ever correct it. So every notification raises the fence
to the primary's WAL position (read on the LISTEN connection, after the
commit it announces), and a standby's read counts only if the standby had
replayed up to the fence before the read's snapshot; otherwise it is read
again on the primary (``dsn``).

One monotonic number, whatever the rate of changes. While the position of a
change this process was notified of is not known yet (between the
notification and the answer of the primary, or when that answer never
came because the LISTEN connection broke), the fence is *pending*: every
read goes to the primary. It is pending from the start too, until the
listener has first read the position, and whenever the LISTEN connection is
down (changes made meanwhile are not notified): then a read the primary
cannot serve is tryLater, as without a standby, never the standby's row.
"""

from __future__ import annotations


class Fence:
    """The WAL position (bytes) a standby read must have replayed to be served, or pending."""

    __slots__ = ("lsn", "pending")

    def __init__(self) -> None:
        self.lsn = 0
        self.pending = True

    def hold(self) -> None:
        """A change was notified whose WAL position is not known yet: reads go to the primary."""
        self.pending = True

    def raise_to(self, lsn: int) -> None:
        """The primary's WAL position after every change notified so far (never lowers the fence)."""
        self.lsn = max(self.lsn, lsn)
        self.pending = False

    def admits(self, replay_lsn: int | None) -> bool:
        """Whether a read made after a standby replayed up to ``replay_lsn`` may be served
        (None: the server read is not in recovery, so it is current)."""
        return replay_lsn is None or (not self.pending and replay_lsn >= self.lsn)
