"""ResNet-50 body from torchvision (layer2/3/4: 512/1024/2048 channels at strides 8/16/32).

Weights never come from the network: pass a local torchvision ImageNet state dict to `build_backbone`.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn


class ResNet50(nn.Module):
    """torchvision's ResNet-50 without avgpool/fc; returns [C3, C4, C5].

    Submodule names equal torchvision's, so its ImageNet state dict loads as is (the fc keys are ignored).
    """

    out_channels = (512, 1024, 2048)
    ignore_prefixes: tuple[str, ...] = ("fc.",)

    def __init__(self):
        super().__init__()
        tv = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = tv.conv1, tv.bn1, tv.relu, tv.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = tv.layer1, tv.layer2, tv.layer3, tv.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]
