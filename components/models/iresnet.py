"""IResNet: the "improved" ResNet used by ArcFace / insightface.

Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition" (CVPR 2019),
Sec. 4 and the insightface model zoo: a stride-1 3x3 stem (faces are small, keep early
resolution), residual units ordered BN-conv-BN-PReLU-conv-BN (no activation after the
addition), four stages of widths 64/128/256/512 that each halve the resolution, and the
"E" output layer BN-Dropout-FC-BN to a 512-d embedding. The FC sees the flattened 512xHxW
map (7x7 at 112 px), which keeps spatial layout in the embedding; that is why the network
must know its ``input_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class IBasicBlock(nn.Module):
    """BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus shortcut (ArcFace Fig. 7c, "IR" unit)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=1e-5)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=1e-5)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch, eps=1e-5)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def _halve(n: int) -> int:
    """Output size of a 3x3, stride-2, padding-1 conv."""
    return (n - 1) // 2 + 1


class IResNet(nn.Module):
    """IResNet with a configurable number of units per stage (``layers``)."""

    widths = (64, 128, 256, 512)

    def __init__(
        self,
        layers: Sequence[int],
        in_channels: int = 3,
        embedding_dim: int = 512,
        input_size: int | tuple[int, int] = 112,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.input_size = (h, w)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        stages, in_ch = [], 64
        for width, n in zip(self.widths, layers):
            units = [IBasicBlock(in_ch, width, stride=2)] + [IBasicBlock(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            in_ch, h, w = width, _halve(h), _halve(w)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * h * w, embedding_dim)
        # The final BN only centres the embedding; its scale stays 1 (as in insightface).
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each unit starts as identity (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"IResNet was built for input_size={self.input_size} but got {tuple(x.shape[-2:])}; "
                "its fc layer depends on the input size"
            )
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x)).flatten(1)
        return self.features(self.fc(x))


def iresnet18(in_channels: int = 3, embedding_dim: int = 512, input_size: int = 112, **kwargs) -> IResNet:
    return IResNet([2, 2, 2, 2], in_channels, embedding_dim, input_size, **kwargs)


def iresnet50(in_channels: int = 3, embedding_dim: int = 512, input_size: int = 112, **kwargs) -> IResNet:
    return IResNet([3, 4, 14, 3], in_channels, embedding_dim, input_size, **kwargs)


__all__ = ["IBasicBlock", "IResNet", "iresnet18", "iresnet50"]
