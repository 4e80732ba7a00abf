"""EfficientNet-Lite0 in plain PyTorch, for the throughput reference (no pretrained weights).

EfficientNet-B0's blocks without squeeze-and-excitation, ReLU6, stem 32 and head 1280 filters:
the same layers and weights as ``cifar10_transfer.efficientnet_lite.EfficientNetLite0`` (the
test checks the block table and the parameter count). Stride-2 convolutions pad symmetrically,
the usual PyTorch way; same cost as Keras's "same" padding.
"""

from __future__ import annotations

import torch
from torch import nn

# (kernel_size, repeats, filters_in, filters_out, expand_ratio, strides): efficientnet_lite.BLOCKS
BLOCKS = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
FEATURES = 1280


def conv_bn(
    filters_in: int,
    filters_out: int,
    kernel_size: int,
    strides: int = 1,
    groups: int = 1,
    relu6: bool = True,
) -> list[nn.Module]:
    conv = nn.Conv2d(
        filters_in, filters_out, kernel_size, strides, kernel_size // 2, groups=groups, bias=False
    )
    return [conv, nn.BatchNorm2d(filters_out)] + ([nn.ReLU6(inplace=True)] if relu6 else [])


class Block(nn.Module):
    """Inverted residual block (MBConv) without squeeze-and-excitation."""

    def __init__(
        self, filters_in: int, filters_out: int, kernel_size: int, strides: int, expand_ratio: int
    ):
        super().__init__()
        filters = filters_in * expand_ratio
        expand = conv_bn(filters_in, filters, 1) if expand_ratio != 1 else []
        self.layers = nn.Sequential(
            *expand,
            *conv_bn(filters, filters, kernel_size, strides, groups=filters),
            *conv_bn(filters, filters_out, 1, relu6=False),
        )
        self.residual = strides == 1 and filters_in == filters_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x) if self.residual else self.layers(x)


def efficientnet_lite0() -> nn.Sequential:
    """Images (N, 3, H, W) scaled to (pixel - 127.5) / 128 -> pooled features (N, 1280)."""
    layers = conv_bn(3, 32, 3, strides=2)
    for kernel_size, repeats, filters_in, filters_out, expand_ratio, strides in BLOCKS:
        for repeat in range(repeats):
            layers.append(
                Block(
                    filters_in if repeat == 0 else filters_out,
                    filters_out,
                    kernel_size,
                    strides if repeat == 0 else 1,
                    expand_ratio,
                )
            )
    layers += conv_bn(BLOCKS[-1][3], FEATURES, 1)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)
