"""Small residual backbone for CPU-scale experiments.

ResNetSmall is He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016):
BasicBlocks (conv-BN-act-conv-BN + shortcut) in four stages, shrunk so that it trains at
~200 img/s on two CPU cores at 64 px. It ends in adaptive average pooling, so the same
network accepts any spatial size: 64x64 RGB images, or 8x8 grids with 189/192 channels
from a frequency-domain front end (use ``stem_stride=1`` for those).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut; a 1x1 conv on the shortcut when shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = nn.PReLU(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = nn.PReLU(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A four-stage ResNet with a linear + BatchNorm1d embedding layer (~1.26M parameters
    with the defaults). Stages after the first halve the resolution; the stem halves it
    too unless ``stem_stride=1`` (for inputs that are already small grids)."""

    def __init__(
        self,
        in_channels: int = 3,
        embedding_dim: int = 128,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (1, 1, 1, 1),
        stem_stride: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths {tuple(widths)} and blocks {tuple(blocks)} must be equal-length and non-empty")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.PReLU(widths[0]),
        )
        stages, in_ch = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(in_ch, width, stride)] + [BasicBlock(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.features(self.fc(self.dropout(x)))


def resnet_small(in_channels: int = 3, embedding_dim: int = 128, input_size: int = 64, **kwargs) -> ResNetSmall:
    """Registry builder. ``input_size`` is unused: adaptive pooling accepts any size."""
    del input_size
    return ResNetSmall(in_channels=in_channels, embedding_dim=embedding_dim, **kwargs)


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal convs, unit-scale BN: the usual ResNet start."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


__all__ = ["BasicBlock", "ResNetSmall", "resnet_small"]

