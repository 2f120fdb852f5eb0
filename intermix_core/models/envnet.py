"""EnvNet (Tokozume & Harada, ICASSP 2017) as a stage list, following the BC-learning reference code.

Input: 24,014 samples at 16 kHz (~1.5 s). The building blocks defined here (`conv_bn_relu`,
`fc_relu_dropout`, `WaveToImage`, `SwapAxes`) are shared with EnvNet-v2, which comes from the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from intermix_core.models.base import StagedModel, register_model

# Chainer's BatchNormalization defaults (eps 2e-5, decay 0.9 == PyTorch momentum 0.1).
BN_EPS = 2e-5
BN_MOMENTUM = 0.1
DROPOUT = 0.5


def conv_bn_relu(in_ch: int, out_ch: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1)) -> nn.Sequential:
    """Bias-free 2-D convolution (He-normal init) -> batch norm -> ReLU, as in the BC-learning code."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, bias=False)
    # Chainer HeNormal: N(0, sqrt(2 / fan_in)), fan_in = in_ch * kh * kw.
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM), nn.ReLU(inplace=True))


def max_pool(kernel: int | tuple[int, int]) -> nn.MaxPool2d:
    """Max pooling with stride = kernel and Chainer's cover_all=True, i.e. PyTorch ceil_mode=True."""
    return nn.MaxPool2d(kernel, stride=kernel, ceil_mode=True)


def linear(in_features: int, out_features: int) -> nn.Linear:
    """Fully connected layer with Chainer's default init: LeCun normal N(0, sqrt(1 / fan_in)), zero bias."""
    fc = nn.Linear(in_features, out_features)
    nn.init.normal_(fc.weight, std=in_features**-0.5)
    nn.init.zeros_(fc.bias)
    return fc


def fc_relu_dropout(in_features: int, out_features: int, flatten: bool = False) -> nn.Sequential:
    """(Flatten ->) fc -> ReLU -> dropout 0.5: one hidden fully connected stage."""
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    layers += [linear(in_features, out_features), nn.ReLU(inplace=True), nn.Dropout(DROPOUT)]
    return nn.Sequential(*layers)


class WaveToImage(nn.Module):
    """Waveforms (B, T) -> (B, 1, 1, T): one channel, height 1, so 1xk convolutions run along time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add channel and height axes."""
        return x[:, None, None, :]


class SwapAxes(nn.Module):
    """(B, C, 1, W) -> (B, 1, C, W): the filter bank becomes the height of a one-channel image."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Swap the channel and height axes."""
        return h.transpose(1, 2)


@register_model("envnet")
class EnvNet(StagedModel):
    """EnvNet (Tokozume & Harada 2017): 16 kHz, T = 24,014; M = 5 stages, L = {1, 2, 3, 4}.

    Stages cut after every pooling, as the authors' InterMix code does for EnvNet-v2:
    1 = conv1, conv2, pool 1x160, swap; 2 = conv3, pool 3x3; 3 = conv4, pool 1x3;
    4 = fc5 (4096); 5 = fc6 (4096); head = fc7. EnvNet has only three pooling blocks, so the
    paper's L = {1, 2, 3, 4} covers the three convolutional blocks and the first fc layer.
    Every stage ends in ReLU (or max pooling of ReLU outputs), so hidden features are >= 0.
    """

    def __init__(self, num_classes: int) -> None:
        stages: list[nn.Module] = [
            nn.Sequential(  # stage 1: raw-waveform filter bank
                WaveToImage(),  # (B, 1, 1, 24014)
                conv_bn_relu(1, 40, (1, 8)),  # (B, 40, 1, 24007)
                conv_bn_relu(40, 40, (1, 8)),  # (B, 40, 1, 24000)
                max_pool((1, 160)),  # (B, 40, 1, 150): 10 ms frames
                SwapAxes(),  # (B, 1, 40, 150): filters x time image
            ),
            nn.Sequential(
                conv_bn_relu(1, 50, (8, 13)),  # (B, 50, 33, 138)
                max_pool(3),  # (B, 50, 11, 46)
            ),
            nn.Sequential(
                conv_bn_relu(50, 50, (1, 5)),  # (B, 50, 11, 42)
                max_pool((1, 3)),  # (B, 50, 11, 14)
            ),
            fc_relu_dropout(50 * 11 * 14, 4096, flatten=True),  # (B, 4096)
            fc_relu_dropout(4096, 4096),  # (B, 4096)
        ]
        super().__init__(stages, head=linear(4096, num_classes))  # (B, num_classes)
