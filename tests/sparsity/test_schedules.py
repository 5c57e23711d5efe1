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


def test_warmup_in_steps_keeps_its_length_and_excludes_warmup_epochs():
    for steps_per_epoch in (5, 50):  # the same 7 steps of warm-up whatever an epoch holds
        schedule = LRSchedule(TrainConfig(epochs=10, warmup_steps=7, schedule="cosine"), steps_per_epoch)
        assert [schedule.factor(s) for s in (0, 6)] == pytest.approx([1 / 7, 1.0])
        span = 10 * steps_per_epoch - 7
        assert schedule.factor(7 + span // 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * (span // 2) / span)))
    longer = LRSchedule(TrainConfig(epochs=2, warmup_steps=980), steps_per_epoch=16)  # RBNN's in a 32-step run
    assert longer.factor(31) == pytest.approx(32 / 980)
    with pytest.raises(ValueError, match=r"warmup_epochs .* and warmup_steps .* both set"):
        TrainConfig(epochs=10, warmup_epochs=0.5, warmup_steps=7)


def test_step_schedule_decays_at_milestones():
    schedule = LRSchedule(TrainConfig(epochs=10, schedule="step", milestones=[3, 6], gamma=0.1), steps_per_epoch=4)
    assert [schedule.factor(e * 4) for e in (0, 2, 3, 5, 6, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
