"""The learning-rate schedule: scaled with the global batch, warmed up, decayed."""

import pytest

from recipes import image
from toolkit.worker import lr_schedules

pytestmark = pytest.mark.fast


def learning_rates(config, world_size, steps_per_epoch):
    scale = lr_schedules.batch_scale(config, world_size)
    schedule = lr_schedules.build(config, scale, steps_per_epoch)
    return [float(schedule(step)) for step in range(config.epochs * steps_per_epoch)]


@pytest.mark.parametrize("world_size", [1, 2, 8])
def test_peak_learning_rate_scales_linearly_with_world_size(world_size):
    config = image.ImageConfig(base_learning_rate=0.001, warmup_epochs=1, epochs=3)
    rates = learning_rates(config, world_size, steps_per_epoch=10)
    assert max(rates) == pytest.approx(0.001 * world_size, rel=1e-6)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_a_fixed_global_batch_has_the_same_rate_on_any_number_of_workers(world_size):
    # base_learning_rate is for a batch of batch_size_per_worker; the global batch is 4x.
    config = image.ImageConfig(base_learning_rate=0.001, batch_size_per_worker=32,
                               global_batch_size=128, warmup_epochs=1, epochs=3)
    rates = learning_rates(config, world_size, steps_per_epoch=10)
    assert max(rates) == pytest.approx(0.004, rel=1e-6)


def test_warmup_ramps_up_then_cosine_decays_towards_zero():
    config = image.ImageConfig(base_learning_rate=0.01, warmup_epochs=1, epochs=4)
    rates = learning_rates(config, world_size=4, steps_per_epoch=10)
    warmup, rest = rates[:10], rates[10:]
    assert all(later > earlier for earlier, later in zip(warmup, warmup[1:]))
    assert all(later <= earlier for earlier, later in zip(rest, rest[1:]))
    assert rest[-1] < 0.01 * 4 * 0.01


def test_sqrt_and_no_scaling():
    assert lr_schedules.scale_factor("sqrt", 16) == 4.0
    assert lr_schedules.scale_factor("none", 16) == 1.0
