"""ResNet-18-NR (paper Appendix B.3): the narrow CIFAR ResNet-18 of alpha-beta-CROWN's
``model_defs.ResNet18`` (BasicBlocks [2, 2, 2, 2], widths in_planes x (1, 2, 4, 8), BatchNorm,
average pooling) with its width doubled, in_planes 2 -> 4, "which leads to 4 times of parameter
number". ReLUs are modules, not ``F.relu``, so that regularizers and metrics can find them.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.models import MODELS


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, in_planes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], in_planes, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        widths, planes = (1, 2, 4, 8), in_planes
        stages = []
        for i, w in enumerate(widths):
            out = in_planes * w
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(planes, out, stride), BasicBlock(out, out, 1)))
            planes = out
        self.layers = nn.Sequential(*stages)
        # alpha-beta-CROWN pools 4x4 (CIFAR: 4x4 -> 1x1); for 28x28 inputs the map is 4x4 too.
        self.pool = nn.AvgPool2d(4)
        self.flatten = nn.Flatten()
        with torch.no_grad():
            features = self._features(torch.zeros(1, *input_shape)).shape[1]
        self.linear = nn.Linear(features, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.pool(self.layers(self.relu(self.bn1(self.conv1(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self._features(x))


@MODELS.register("resnet18nr")
def resnet18nr(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return ResNet18(input_shape, num_classes, in_planes=4)
