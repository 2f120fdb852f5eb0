"""M18 (Dai, Dai, Qu, Li & Das, ICASSP 2017, "Very deep CNNs for raw waveforms") as a stage list.

Input: 32,000 samples at 8 kHz (4 s), as in the original. 17 one-dimensional convolutions
(each followed by batch norm and ReLU), no fully connected hidden layer and no dropout:
a global average pool feeds the single output layer (the 18th weight layer).
"""

from __future__ import annotations

import torch
from torch import nn

from intermix_core.models.base import StagedModel, register_model


def conv_bn_relu_1d(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Bias-free 1-D convolution with 'same' padding (He-normal init) -> batch norm -> ReLU."""
    # padding = (kernel - 1) // 2 keeps the length for stride 1 and gives ceil(T / stride) for
    # conv1 (80/4 on 32,000 samples -> 8,000), matching the output sizes in Dai et al.'s Table 1.
    conv = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm1d(out_ch), nn.ReLU(inplace=True))


def conv_group(in_ch: int, out_ch: int, n_layers: int = 4) -> list[nn.Module]:
    """`n_layers` 3-tap conv-BN-ReLU layers; the first one changes the width to `out_ch`."""
    return [conv_bn_relu_1d(in_ch if i == 0 else out_ch, out_ch, 3) for i in range(n_layers)]


class GlobalAvgPool1d(nn.Module):
    """(B, C, T) -> (B, C): mean over time."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Average the time axis away."""
        return h.mean(dim=-1)


@register_model("m18")
class M18(StagedModel):
    """M18 (Dai et al. 2017): 8 kHz, T = 32,000; M = 5 stages, L = {1, 2, 3, 4}.

    1 = conv 80/4 (64), pool 4; 2 = 4 x conv 3 (64), pool 4; 3 = 4 x conv 3 (128), pool 4;
    4 = 4 x conv 3 (256), pool 4; 5 = 4 x conv 3 (512), global average pool; head = fc.
    Stages cut after every pooling, so L = {1, 2, 3, 4} is the first conv and the first three
    groups. Every stage ends in ReLU, max pooling or averaging of ReLU outputs: features are >= 0.
    """

    def __init__(self, num_classes: int) -> None:
        stages: list[nn.Module] = [
            nn.Sequential(
                nn.Unflatten(1, (1, -1)),  # (B, 1, 32000)
                conv_bn_relu_1d(1, 64, 80, stride=4),  # (B, 64, 8000): 10 ms receptive field
                nn.MaxPool1d(4),  # (B, 64, 2000)
            ),
            nn.Sequential(*conv_group(64, 64), nn.MaxPool1d(4)),  # (B, 64, 500)
            nn.Sequential(*conv_group(64, 128), nn.MaxPool1d(4)),  # (B, 128, 125)
            nn.Sequential(*conv_group(128, 256), nn.MaxPool1d(4)),  # (B, 256, 31)
            nn.Sequential(*conv_group(256, 512), GlobalAvgPool1d()),  # (B, 512)
        ]
        head = nn.Linear(512, num_classes)  # (B, num_classes); softmax lives in the loss
        nn.init.normal_(head.weight, std=512**-0.5)
        nn.init.zeros_(head.bias)
        super().__init__(stages, head)
