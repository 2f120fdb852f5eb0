"""SoundNet5 (Aytar, Vondrick & Torralba, NeurIPS 2016): the 5-layer SoundNet as a stage list.

Layer sizes follow the authors' 5-layer network (`main_train_small.lua` in cvondrick/soundnet):
four hidden 1-D convolutions (32/64/128/256 filters of 64/32/16/8 taps, stride 2, batch norm, ReLU,
max pooling 8 after the first three) and an output convolution conv5 (16 taps, stride 12), whose
1,401 teacher classes become `num_classes` here, trained from scratch like the paper's
"no video supervision" SoundNet. Input: 88,200 samples at 22.05 kHz (4 s).
"""

from __future__ import annotations

import torch
from torch import nn

from intermix_core.models.base import StagedModel, register_model


def conv_bn_relu_1d(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    """Stride-2 1-D convolution with kernel/2 padding (N(0, 0.01) init) -> batch norm -> ReLU."""
    # The original convolutions carry a bias; batch norm right after makes it redundant, so it is dropped.
    conv = nn.Conv1d(in_ch, out_ch, kernel, stride=2, padding=kernel // 2, bias=False)
    nn.init.normal_(conv.weight, std=0.01)  # the authors' initialisation
    return nn.Sequential(conv, nn.BatchNorm1d(out_ch), nn.ReLU(inplace=True))


class ConvOutputHead(nn.Module):
    """conv5 as a classifier: class scores per ~6 s window (B, C, t), averaged over the t windows."""

    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__()
        self.conv5 = nn.Conv1d(in_ch, num_classes, 16, stride=12, padding=4)
        nn.init.normal_(self.conv5.weight, std=0.01)
        nn.init.zeros_(self.conv5.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, 256, 11) -> (B, num_classes)."""
        return self.conv5(h).mean(dim=-1)  # (B, num_classes, 1) -> (B, num_classes)


@register_model("soundnet5")
class SoundNet5(StagedModel):
    """SoundNet5 (Aytar et al. 2016): 22.05 kHz, T = 88,200 (4 s); M = 4 stages, L = {1, 2, 3, 4}.

    1 = conv1 (32), pool 8; 2 = conv2 (64), pool 8; 3 = conv3 (128), pool 8; 4 = conv4 (256);
    head = conv5 (num_classes, 16 taps, stride 12) averaged over time. Every hidden layer is a stage,
    so L = {1, 2, 3, 4} is all of them. T is chosen so conv5 needs at least 2.6 s of input; 4 s
    (<= 4.4 s) is the longest round length whose single conv5 window still sees every conv4 frame.
    Every stage ends in ReLU (or max pooling of ReLU outputs), so hidden features are >= 0.
    """

    def __init__(self, num_classes: int) -> None:
        stages: list[nn.Module] = [
            nn.Sequential(
                nn.Unflatten(1, (1, -1)),  # (B, 1, 88200)
                conv_bn_relu_1d(1, 32, 64),  # (B, 32, 44101)
                nn.MaxPool1d(8),  # (B, 32, 5512)
            ),
            nn.Sequential(conv_bn_relu_1d(32, 64, 32), nn.MaxPool1d(8)),  # (B, 64, 2757) -> (B, 64, 344)
            nn.Sequential(conv_bn_relu_1d(64, 128, 16), nn.MaxPool1d(8)),  # (B, 128, 173) -> (B, 128, 21)
            conv_bn_relu_1d(128, 256, 8),  # (B, 256, 11): one frame per ~0.37 s
        ]
        super().__init__(stages, head=ConvOutputHead(256, num_classes))  # (B, num_classes)
