import pytest
import torch

from slimkit.models import MODELS, build_model
from slimkit.models.resnet import BiRealBlock, ShortcutA, resnet20, resnet56
from slimkit.recipe import ModelConfig


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32)])
def test_every_model_runs_on_every_input_shape(name, channels, size):
    model = build_model(ModelConfig(name=name, width=0.25), channels, 7, size)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_resnet_depths_and_option_a_shortcut():
    count = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())  # noqa: E731
    assert count(resnet20()) == 19 and count(resnet56()) == 55  # + the linear head = 20 / 56 layers
    x = torch.randn(2, 16, 8, 8)
    out = ShortcutA(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_bireal_variant_has_a_shortcut_around_every_conv():
    torch.manual_seed(0)
    model = resnet20(block="bireal", activation="hardtanh")
    assert all(isinstance(b, BiRealBlock) for b in model.layer1)
    block = model.layer1[0].eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        mid = block.act1(block.bn1(block.conv1(x)) + x)
        expected = block.act2(block.bn2(block.conv2(mid)) + mid)
        assert torch.allclose(block(x), expected)


def test_width_scales_channels():
    assert resnet20(width=0.5).conv1.out_channels == 8
    assert build_model(ModelConfig(name="vgg_small", width=0.5), 3, 10, 32).conv0.out_channels == 64
