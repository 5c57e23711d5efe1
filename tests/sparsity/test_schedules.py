import math

import pytest

from slimkit.recipe import TrainConfig
from slimkit.sparsity.schedules import cubic_sparsity
from slimkit.train.lr import LRSchedule


@pytest.mark.parametrize(("progress", "expected"), [(0.25, 0.52031), (0.5, 0.7875), (0.75, 0.88594)])
def test_cubic_schedule_matches_spec_values(progress, expected):
    # spec §7: s_i = 0, s_f = 0.9 at 25/50/75% of the window
    assert cubic_sparsity(progress, 0.0, 0.9) == pytest.approx(expected, abs=5e-6)


def test_cubic_schedule_endpoints_and_clamping():
    assert cubic_sparsity(0.0, 0.1, 0.9) == pytest.approx(0.1)
    assert cubic_sparsity(1.0, 0.1, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(-3.0, 0.1, 0.9) == pytest.approx(0.1)
    assert cubic_sparsity(7.0, 0.1, 0.9) == pytest.approx(0.9)
    values = [cubic_sparsity(t / 20, 0.0, 0.9) for t in range(21)]
    assert values == sorted(values)


def test_cosine_with_linear_warmup():
    schedule = LRSchedule(TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine"), steps_per_epoch=5)
    assert schedule.factor(0) == pytest.approx(1 / 10)
    assert schedule.factor(9) == pytest.approx(1.0)
    assert schedule.factor(10) == pytest.approx(1.0)
    assert schedule.factor(10 + 20) == pytest.approx(0.5)  # half-way through the 40 cosine steps
    assert schedule.factor(49) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))


def test_step_schedule_decays_at_milestones():
    schedule = LRSchedule(TrainConfig(epochs=10, schedule="step", milestones=[3, 6], gamma=0.1), steps_per_epoch=4)
    assert [schedule.factor(e * 4) for e in (0, 2, 3, 5, 6, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
