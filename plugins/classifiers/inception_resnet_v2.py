"""Inception-ResNet-v2 (Szegedy et al. 2017), the paper's "IncepResNet_V2" comparison network, built by timm.

timm's ``inception_resnet_v2`` already ends in global pooling -> ``head_drop`` (Dropout) -> ``classif``
(Linear): the paper's dropout before the output layer. Random init (``pretrained=False``); a timm ImageNet
state dict file initialises it through ``training.weights``. Input >= 75 px (299 native).
"""
from __future__ import annotations

from torch import nn


def build(num_classes: int = 2, in_channels: int = 3, dropout: float = 0.5) -> nn.Module:
    import timm

    return timm.create_model("inception_resnet_v2", pretrained=False, num_classes=num_classes, in_chans=in_channels,
                             drop_rate=dropout)
