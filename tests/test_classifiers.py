"""Classifier plugins: shapes, dropout before the output layer, 1-channel input, local ImageNet init."""
import numpy as np
import pytest
import torch
from torch import nn

from slidestream.engine import registry
from slidestream.engine.errors import ConfigError
from slidestream.plugins.classifiers.nets import load_imagenet

PAPER = ["resnet50", "inception_v3", "inception_resnet_v2", "vgg19"]


def _output_layer_has_dropout_before(model: nn.Module) -> bool:
    mods = [m for m in model.modules() if isinstance(m, (nn.Dropout, nn.Linear))]
    return isinstance(mods[-1], nn.Linear) and isinstance(mods[-2], nn.Dropout)


@pytest.mark.parametrize("name", PAPER + ["resnet18", "small_cnn"])
def test_forward_shape_and_dropout(name):
    torch.manual_seed(0)
    plugin = registry.get("classifier", name)
    model = plugin.build(num_classes=2, in_channels=1, dropout=0.3).eval()
    size = 75 if "incep" in name else 32  # Inception nets need >= 75 px
    with torch.no_grad():
        y = model(torch.rand(2, 1, size, size))
    assert y.shape == (2, 2)
    assert _output_layer_has_dropout_before(model)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())


def test_all_paper_architectures_registered():
    assert set(PAPER) <= set(registry.plugins("classifier"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_imagenet_init_sums_rgb_kernels_and_skips_fc(tmp_path, suffix):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    src = resnet18(weights=None)  # stands in for an ImageNet file (torchvision key names, 1000-class fc)
    sd = src.state_dict()
    path = tmp_path / f"imagenet{suffix}"
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = registry.get("classifier", "resnet18").build(num_classes=2, in_channels=1, dropout=0.5)
    counts = load_imagenet(model, path)
    assert counts["adapted"] == 1
    assert torch.allclose(model.conv1.weight, sd["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert model.fc[1].weight.shape == (2, 512)  # the 1000-class head is not loaded


def test_imagenet_init_refuses_other_architecture(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    model = registry.get("classifier", "small_cnn").build(num_classes=2, in_channels=3, dropout=0.5)
    with pytest.raises(ConfigError, match="matches only"):
        load_imagenet(model, tmp_path / "r18.pth")
    with pytest.raises(ConfigError, match="not found"):
        load_imagenet(model, tmp_path / "missing.pth")


def test_resnet50_trains_loss_falls_on_a_learnable_batch():
    """The real resnet50 plugin (torchvision ResNet50, 1-channel stem, dropout head) with the engine's optimizer,
    at 64 px: a few steps on a fixed batch whose classes differ in brightness must bring the loss down."""
    from slidestream.engine import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is several times faster (bench/README.md)
    try:
        torch.manual_seed(0)
        model = registry.get("classifier", "resnet50").build(num_classes=2, in_channels=1, dropout=0.5).train()
        y = torch.tensor([0, 1] * 4)
        x = torch.randn(8, 1, 64, 64) * 0.5 + (y.float() - 0.5)[:, None, None, None]
        opt, sched = train.optimizer(model, {**train.DEFAULTS, "lr": 1e-3})
        losses = []
        for _ in range(5):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    # the first loss is near chance (log 2 = 0.69); the last two, averaged against dropout noise, far below
    assert losses[0] > 0.4 and np.mean(losses[-2:]) < 0.25 * losses[0], losses


def test_inception_resnet_v2_parameter_count():
    """timm's Inception-ResNet-v2 with the 1000-class ImageNet head has 55,843,464 parameters (timm's model
    card: 55.8 M); with the paper's 2-class head 1536 * 998 + 998 fewer."""
    with torch.device("meta"):
        model = registry.get("classifier", "inception_resnet_v2").build(num_classes=1000, in_channels=3, dropout=0.5)
        two = registry.get("classifier", "inception_resnet_v2").build(num_classes=2, in_channels=3, dropout=0.5)
    assert sum(p.numel() for p in model.parameters()) == 55_843_464
    assert sum(p.numel() for p in two.parameters()) == 55_843_464 - 1537 * 998
