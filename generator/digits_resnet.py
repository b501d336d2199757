"""The demo's second architecture: a small ResNet on the digits, a plain ``nn.Module``
recorded and visualised by its module names through the generic path (docs/networks.md,
"Any PyTorch network"), as a user's own model would be.

:class:`DigitsResNet` follows torchvision's ResNet naming (``conv1``, ``bn1``, ``relu``,
``layer1``..``layer3`` of :class:`BasicBlock` (``conv1``, ``bn1``, ``conv2``, ``bn2``,
``downsample.0/1``), ``avgpool``, ``fc``) for 1x32x32 digits (the demo's inputs,
:data:`generator.digits.DEMO_PREPROCESSING`): 3x3 stem of 16 channels, no max-pool, stages
of 16, 32 and 64 channels on maps of 32, 16 and 8 pixels, two blocks each, global average
pooling, 10 logits. Its layers for the study: ``layer2`` (32 channels, 16x16; the
"conv" layer), ``layer3`` (64 channels, 8x8) and ``fc`` (the logits, as fc8).

:func:`generator.digits.trained_digits_resnet` is the reference a command line takes
(``--network generator.digits:trained_digits_resnet``): it trains the network on first
use with :func:`generator.digits.train_demo_network` (the same recipe, split and
determinism as the demo network), caches it under :func:`common.files.cache_dir`
(``demo/digits_resnet_seed2.pt``), and returns it in eval mode with its
``preprocessing`` attribute set. This module holds the architecture alone.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "DigitsResNet", "RESNET_LAYERS"]

#: The layers the demo rates on the ResNet, and what they stand for in the paper's terms.
RESNET_LAYERS = {"layer2": "conv", "layer3": "conv", "fc": "fc8"}


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 convolutions with batch norm, and a shortcut
    (a strided 1x1 convolution with batch norm where the shape changes)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class DigitsResNet(nn.Module):
    """A ResNet for 1x32x32 digits: 16-32-64 channels, two blocks a stage, 10 classes."""

    def __init__(self, n_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride),
                                        BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
