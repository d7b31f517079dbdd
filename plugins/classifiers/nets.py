"""Patch classifiers: the paper's ResNet50 and its comparison networks (Table 1), plus small nets.

Every network maps (n, in_channels, s, s) float tensors to (n, num_classes) logits and has a dropout
layer right before its output layer (paper: "a dropout layer was added ... before the softmax").
Weights are never downloaded: networks start random (``weights=None``) and :func:`load_imagenet` can
initialise them from a local torchvision ``state_dict`` file (``training.weights``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn



def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Swap the first Conv2d for one taking ``in_channels`` (1 for grayscale input)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(parent, name, nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride,
                                                    child.padding, child.dilation, child.groups, child.bias is not None))
                return model
    raise ValueError("model has no Conv2d")


def _resnet(fn):
    def build(num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
        m = fn(weights=None)
        m.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(m.fc.in_features, num_classes))
        return replace_first_conv(m, in_channels)
    return build


def _inception_v3(num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    from torchvision.models import inception_v3

    # torchvision's Inception3 already has `dropout` before `fc`; no aux head, no ImageNet input transform
    m = inception_v3(weights=None, aux_logits=False, init_weights=True, dropout=dropout, transform_input=False)
    m.fc = nn.Linear(m.fc.in_features, num_classes)
    return replace_first_conv(m, in_channels)


def _vgg19(num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    from torchvision.models import vgg19

    m = vgg19(weights=None, dropout=dropout)  # classifier: ... Dropout(p) -> Linear(4096, 1000)
    m.classifier[6] = nn.Linear(4096, num_classes)
    return replace_first_conv(m, in_channels)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool blocks, global average pooling, dropout, linear: for tests and the demo."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5, width: int = 16):
        super().__init__()
        layers, c = [], in_channels
        for k in range(4):
            w = width * 2 ** k
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _small_cnn(num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5, width: int = 16) -> nn.Module:
    return SmallCNN(num_classes, in_channels, dropout, width)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a local ``.safetensors`` or ``.pth``/``.pt`` file (tensors only, never pickled code)."""
    from slidestream.engine.errors import ConfigError

    p = Path(path)
    fix = "give a local torchvision state_dict (.pth or .safetensors) in training.weights, or leave it out to train from scratch"
    if not p.is_file():
        raise ConfigError(f"weights file {p} {'is a folder' if p.is_dir() else 'not found'}; {fix}")
    if p.stat().st_size == 0:
        raise ConfigError(f"weights file {p} is empty (0 bytes); {fix}")
    try:  # a text file, a slide or a cut copy was a traceback (an empty one 'error: aborted': click's EOFError)
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(p))
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing error
        raise ConfigError(f"cannot read weights file {p} ({type(e).__name__}: {next(iter(str(e).splitlines()), '')[:120]}); "
                          f"{fix}") from None
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def load_imagenet(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Initialise ``model`` from an ImageNet state_dict file. Keys are matched by name and shape; the
    first conv is adapted by summing its RGB kernels when the model takes one channel; the output layer
    (different shape) is left random. Returns counts ``{"loaded", "adapted", "skipped"}``; raises
    ConfigError when under half of the model's weights match (a file for another architecture)."""
    from slidestream.engine.errors import ConfigError

    src = read_state_dict(path)
    own = model.state_dict()
    new, adapted, skipped = {}, 0, 0
    for k, v in own.items():
        s = src.get(k)
        if s is None or not torch.is_tensor(s):
            skipped += 1
        elif s.shape == v.shape:
            new[k] = s.to(v.dtype)
        elif s.dim() == 4 and v.dim() == 4 and s.shape[1] == 3 and v.shape[1] == 1 and s.shape[0] == v.shape[0]:
            new[k] = s.sum(dim=1, keepdim=True).to(v.dtype)
            adapted += 1
        else:
            skipped += 1
    if len(new) < 0.5 * len(own):
        raise ConfigError(f"weights file {path} matches only {len(new)} of {len(own)} tensors of this network; "
                          "is it a state_dict for the same architecture (torchvision key names)?")
    model.load_state_dict(new, strict=False)
    return {"loaded": len(new), "adapted": adapted, "skipped": skipped}


_DROPOUT = {"dropout": {"type": "number", "minimum": 0, "maximum": 1}}


def build_resnet50(num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    from torchvision.models import resnet50

    return _resnet(resnet50)(num_classes, in_channels, dropout)


def build_resnet18(num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    from torchvision.models import resnet18

    return _resnet(resnet18)(num_classes, in_channels, dropout)
