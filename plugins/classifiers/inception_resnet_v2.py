"""Inception-ResNet-v2 (Szegedy et al. 2017), the paper's "IncepResNet_V2" comparison network.

torchvision has none, so it is written out here; module names follow timm's ``inception_resnet_v2``
so a timm ImageNet state_dict file initialises it through ``training.weights``. Input >= 75 px (299 native).
"""
from __future__ import annotations

import torch
from torch import nn



class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


def _seq(*specs):
    return nn.Sequential(*[BasicConv2d(*s[:3], **(s[3] if len(s) > 3 else {})) for s in specs])


class _Concat(nn.Module):
    def forward(self, x):
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n)], 1)


class Mixed5b(_Concat):
    n = 4

    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(192, 96, 1)
        self.branch1 = _seq((192, 48, 1), (48, 64, 5, {"padding": 2}))
        self.branch2 = _seq((192, 64, 1), (64, 96, 3, {"padding": 1}), (96, 96, 3, {"padding": 1}))
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), BasicConv2d(192, 64, 1))


class Mixed6a(_Concat):
    n = 3

    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(320, 384, 3, stride=2)
        self.branch1 = _seq((320, 256, 1), (256, 256, 3, {"padding": 1}), (256, 384, 3, {"stride": 2}))
        self.branch2 = nn.MaxPool2d(3, stride=2)


class Mixed7a(_Concat):
    n = 4

    def __init__(self):
        super().__init__()
        self.branch0 = _seq((1088, 256, 1), (256, 384, 3, {"stride": 2}))
        self.branch1 = _seq((1088, 256, 1), (256, 288, 3, {"stride": 2}))
        self.branch2 = _seq((1088, 256, 1), (256, 288, 3, {"padding": 1}), (288, 320, 3, {"stride": 2}))
        self.branch3 = nn.MaxPool2d(3, stride=2)


class _Residual(_Concat):
    """x + scale * conv1x1(concat(branches)), then ReLU (unless ``no_relu``)."""

    def __init__(self, channels, cat, scale, no_relu=False):
        super().__init__()
        self.scale = scale
        self.conv2d = nn.Conv2d(cat, channels, 1)
        self.relu = None if no_relu else nn.ReLU(inplace=True)

    def forward(self, x):
        out = x + self.scale * self.conv2d(super().forward(x))
        return out if self.relu is None else self.relu(out)


class Block35(_Residual):
    n = 3

    def __init__(self, scale=0.17):
        super().__init__(320, 128, scale)
        self.branch0 = BasicConv2d(320, 32, 1)
        self.branch1 = _seq((320, 32, 1), (32, 32, 3, {"padding": 1}))
        self.branch2 = _seq((320, 32, 1), (32, 48, 3, {"padding": 1}), (48, 64, 3, {"padding": 1}))


class Block17(_Residual):
    n = 2

    def __init__(self, scale=0.10):
        super().__init__(1088, 384, scale)
        self.branch0 = BasicConv2d(1088, 192, 1)
        self.branch1 = _seq((1088, 128, 1), (128, 160, (1, 7), {"padding": (0, 3)}), (160, 192, (7, 1), {"padding": (3, 0)}))


class Block8(_Residual):
    n = 2

    def __init__(self, scale=0.20, no_relu=False):
        super().__init__(2080, 448, scale, no_relu)
        self.branch0 = BasicConv2d(2080, 192, 1)
        self.branch1 = _seq((2080, 192, 1), (192, 224, (1, 3), {"padding": (0, 1)}), (224, 256, (3, 1), {"padding": (1, 0)}))


class InceptionResNetV2(nn.Module):
    def __init__(self, num_classes=2, in_channels=3, dropout=0.5):
        super().__init__()
        self.conv2d_1a = BasicConv2d(in_channels, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed5b()
        self.repeat = nn.Sequential(*[Block35() for _ in range(10)])
        self.mixed_6a = Mixed6a()
        self.repeat_1 = nn.Sequential(*[Block17() for _ in range(20)])
        self.mixed_7a = Mixed7a()
        self.repeat_2 = nn.Sequential(*[Block8() for _ in range(9)])
        self.block8 = Block8(no_relu=True)
        self.conv2d_7b = BasicConv2d(2080, 1536, 1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(dropout)
        self.classif = nn.Linear(1536, num_classes)

    def forward(self, x):
        for name in ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a",
                     "mixed_5b", "repeat", "mixed_6a", "repeat_1", "mixed_7a", "repeat_2", "block8", "conv2d_7b"):
            x = getattr(self, name)(x)
        return self.classif(self.head_drop(torch.flatten(self.global_pool(x), 1)))


def build(num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    return InceptionResNetV2(num_classes, in_channels, dropout)
