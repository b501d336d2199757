"""torchvision's ResNet architectures, for machines where torchvision does not import.

``--network torchvision:<name>`` builds torchvision's own constructor when torchvision
imports (:func:`generator.loading.build_network`). PyPI's torchvision wheels are built
against one torch version each and cannot import beside the CPU build of torch this
project installs, so the project carries the ResNets itself: :func:`resnet18`,
:func:`resnet34`, :func:`resnet50`, :func:`resnet101` and :func:`resnet152` have
torchvision's module names (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ..
``layer4`` of ``BasicBlock`` or ``Bottleneck`` blocks, ``avgpool``, ``fc``), its state-dict
keys and its forward pass (ResNet v1.5: a bottleneck strides in its 3x3 convolution;
ReLUs in place), so a ``.pth`` saved from torchvision loads with ``strict=True`` and
gives the same outputs. Random initialisation follows torchvision's (He-normal
convolutions, unit batch norms); nothing here downloads weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "MODELS",
]


def _conv3x3(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)


def _conv1x1(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18 and -34)."""

    expansion = 1

    def __init__(self, inputs: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inputs, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided), 1x1 convolutions with a shortcut (ResNet-50 and deeper)."""

    expansion = 4

    def __init__(self, inputs: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inputs, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut
        return self.relu(out)


class ResNet(nn.Module):
    """A ResNet for 224x224 RGB inputs (any size from 32 works: the pooling adapts)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: list[int],
                 num_classes: int = 1000):
        super().__init__()
        self._inputs = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, depths[0], 1)
        self.layer2 = self._stage(block, 128, depths[1], 2)
        self.layer3 = self._stage(block, 256, depths[2], 2)
        self.layer4 = self._stage(block, 512, depths[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, block, planes: int, depth: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inputs != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self._inputs, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        blocks = [block(self._inputs, planes, stride, downsample)]
        self._inputs = planes * block.expansion
        blocks += [block(self._inputs, planes) for _ in range(1, depth)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (11,689,512 parameters with 1,000 classes, as torchvision's)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
    """ResNet-34 (21,797,672 parameters with 1,000 classes)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (25,557,032 parameters with 1,000 classes)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


def resnet101(num_classes: int = 1000) -> ResNet:
    """ResNet-101 (44,549,160 parameters with 1,000 classes)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes)


def resnet152(num_classes: int = 1000) -> ResNet:
    """ResNet-152 (60,192,808 parameters with 1,000 classes)."""
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes)


#: The architectures here, by torchvision's names.
MODELS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50,
    "resnet101": resnet101, "resnet152": resnet152,
}
