"""A compact CIFAR-style ResNet (He et al. 2016, Sec. 4.2) for 1x28x28 Fashion-MNIST images.

ResNet-(6n+2): a 3x3 stem, three stages of n basic blocks with `width`, 2*width, 4*width channels
(strides 1, 2, 2; a 1x1 conv + BN shortcut where the shape changes), global average pooling and a
linear classifier. n=1, width=16 is ResNet-8 (78k parameters); n=3 is ResNet-20.
The stem and the blocks are the children of one `nn.Sequential` (`features`), which is where
InfoQ places its observers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Stem(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int = 1, width: int = 16, in_chans: int = 1, num_classes: int = 10):
        super().__init__()
        if blocks_per_stage < 1 or width < 1:
            raise ValueError(f"blocks_per_stage and width must be >= 1, got {blocks_per_stage}, {width}")
        self.config = {
            "blocks_per_stage": blocks_per_stage,
            "width": width,
            "in_chans": in_chans,
            "num_classes": num_classes,
        }
        layers: list[nn.Module] = [Stem(in_chans, width)]
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def save_checkpoint(model: CifarResNet, path, **extra) -> None:
    torch.save({"config": model.config, "state_dict": model.state_dict(), **extra}, path)


def load_checkpoint(path) -> tuple[CifarResNet, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by recipes/qat/train_fashion_mnist.py")
    model = CifarResNet(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
