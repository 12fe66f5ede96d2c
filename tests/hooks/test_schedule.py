"""Schedules: every N steps, log-spaced early steps, bad arguments."""

import pytest

from edgewatch.hooks.schedule import Schedule


def test_every_step_by_default():
    assert all(Schedule()(step) for step in range(50))


def test_every_n_and_dense_early():
    schedule = Schedule(every=16, dense_until=1000, per_decade=5)
    steps = [s for s in range(2000) if schedule(s)]
    early = [s for s in steps if s < 1000 and s % 16]
    assert early == [1, 2, 3, 6, 10, 15, 25, 39, 63, 100, 158, 251, 398, 630]  # ⌊10^(i/5)⌋ off the 16-grid
    assert all(s % 16 == 0 for s in steps if s >= 1000)


def test_bad_arguments():
    with pytest.raises(ValueError, match="every must be a positive number of steps"):
        Schedule(every=0)
    with pytest.raises(ValueError, match="per_decade"):
        Schedule(dense_until=10, per_decade=0)
