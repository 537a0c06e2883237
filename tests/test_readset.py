"""The read set's rules (ocspd/store/readset.py): a read target's lag is the age of the oldest
primary WAL position it has not replayed; past ``read_max_lag``, or not answering, it is out."""

from __future__ import annotations

import pytest

from ocspd.store.readset import HORIZON_LAGS, ReadTarget, TargetState

MAX_LAG = 5.0


Check = tuple[float, int | None, int | None] | tuple[float, int | None, int | None, float | None]


def checked(*checks: Check) -> ReadTarget:
    """A target after checks of (time, primary position, replay position[, last replayed commit's age])."""
    target = ReadTarget(MAX_LAG)
    for now, primary, replayed, *age in checks:
        target.observe(now, primary, replayed, *age)
    return target


@pytest.mark.parametrize(
    ("checks", "lag"),
    [
        pytest.param([(0, 100, 100), (1, 100, 100), (60, 100, 100)], 0.0, id="idle-primary-replayed-is-current"),
        pytest.param([(0, 100, 90)], 0.0, id="behind-a-position-just-seen"),
        pytest.param([(0, 100, 90), (1, 100, 90), (2, 120, 95)], 2.0, id="behind-since-the-first-check"),
        pytest.param([(0, 100, 90), (1, 120, 100), (2, 130, 100)], 2.0, id="since-the-last-position-it-had-replayed"),
        pytest.param([(0, 100, 90), (1, 120, 100, 0.3)], 0.3, id="or-since-its-last-commit-if-sooner"),
        pytest.param([(0, 100, 100), (1, 200, 150, 0.05)], 0.05, id="steady-writes-a-current-standby"),
        pytest.param([(0, 100, 100), (1, 200, 150, 600.0)], 1.0, id="a-commit-after-a-quiet-spell"),
        pytest.param([(0, 100, 90), (1, 120, 130)], 0.0, id="caught-up"),
        pytest.param([(0, 100, None), (9, 200, None)], 0.0, id="not-in-recovery-is-current"),
        pytest.param([(0, 100, 90), (3, None, 90)], 3.0, id="primary-unread-judged-on-what-was-seen"),
    ],
)
def test_lag_is_the_age_of_the_oldest_unreplayed_position_at_most(checks: list[Check], lag: float) -> None:
    target = checked(*checks)
    assert target.lag == lag
    assert target.state is TargetState.IN_USE


@pytest.mark.parametrize(
    ("behind_for", "state"),
    [
        pytest.param(MAX_LAG, TargetState.IN_USE, id="at-the-bound-in-use"),
        pytest.param(MAX_LAG + 0.5, TargetState.LAGGING, id="past-the-bound-out"),
    ],
)
def test_a_target_past_read_max_lag_leaves_the_read_set(behind_for: float, state: TargetState) -> None:
    target = checked((0, 100, 90), (behind_for, 110, 90))
    assert target.state is state
    assert target.in_use == (state is TargetState.IN_USE)


def test_a_lagging_target_comes_back_once_it_has_caught_up() -> None:
    target = checked((0, 100, 90), (10, 110, 95))
    assert target.state is TargetState.LAGGING and "out of the read set" in target.describe()
    target.observe(11, 110, 110)
    assert target.in_use and target.lag == 0.0


def test_a_target_that_does_not_answer_is_down_until_a_check_answers() -> None:
    target = checked((0, 100, 100))
    target.failed("database unavailable: connection refused")
    assert target.state is TargetState.DOWN and target.lag is None and not target.in_use
    assert "connection refused" in target.describe() and "reads go to the primary" in target.describe()
    target.observe(1, 100, 100)
    assert target.in_use and target.error == ""


def test_positions_are_remembered_for_a_bounded_time() -> None:
    """A revocation storm or a long outage does not grow the history: one position per check
    at most, none older than the horizon, and a target behind all of them is at least that late."""
    target = ReadTarget(MAX_LAG)
    horizon = HORIZON_LAGS * MAX_LAG
    for second in range(1000):
        target.observe(float(second), 1000 + second, 500)
    assert target.remembered <= horizon + 2
    assert target.lag is not None and horizon <= target.lag <= horizon + 1
    assert target.state is TargetState.LAGGING
