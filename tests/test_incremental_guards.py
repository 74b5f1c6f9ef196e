"""Guards the incremental family adds to the verdict rule."""
from __future__ import annotations

from repro.families.incremental.protocol import guard_tasks, untrained_tasks
from repro.sweep import SweepResult


def test_a_task_at_chance_right_after_training_is_untrained():
    A = [[80.0], [10.0, 0.0], [5.0, 0.0, 60.0]]   # task 1 never learned; forgetting is fine
    assert untrained_tasks(A) == [1]
    assert untrained_tasks([[50.0], [0.0, 40.0]]) == []
    # tasks of 10, 5, 5 classes: chance after task 1 is 100/15 = 6.67%, after task 2 5%
    A = [[60.0], [55.0, 6.5], [50.0, 20.0, 5.1]]
    assert untrained_tasks(A, [10, 5, 5]) == [1]
    assert untrained_tasks(A, [10, 5, 5]) != untrained_tasks(A)  # without sizes only 0% counts


class _Run:
    def __init__(self):
        self.flags = {}

    def flag(self, reason, arm=None, claim=None):
        self.flags[(arm, claim)] = reason


def test_guard_tasks_flags_the_arm():
    res = SweepResult([{"arm": "pass_", "seed": 1, "metrics": {}, "extra": {"A": [[50.0], [0.0, 0.0]]}},
                       {"arm": "napavq", "seed": 1, "metrics": {}, "extra": {"A": [[50.0], [20.0, 30.0]]}}])
    run = _Run()
    guard_tasks(run, res)
    assert list(run.flags) == [("pass_", None)] and "0.0% (at or below chance) on task 1" in run.flags[("pass_", None)]
