"""EnvNet-v2 (Tokozume, Ushiku & Harada, ICLR 2018) as a stage list, following the BC-learning reference code.

Input: 66,650 samples at 44.1 kHz (~1.5 s). Stage cuts match the official InterMix code, which mixes
only EnvNet-v2: after conv2+pool+swap (1), conv4+pool (2), conv6+pool (3) and conv8+pool (4).
"""

from __future__ import annotations

from torch import nn

from intermix_core.models.base import StagedModel, register_model
from intermix_core.models.envnet import SwapAxes, WaveToImage, conv_bn_relu, fc_relu_dropout, linear, max_pool


@register_model("envnet_v2")
class EnvNetV2(StagedModel):
    """EnvNet-v2 (Tokozume et al. 2018): 44.1 kHz, T = 66,650; M = 7 stages, L = {1, 2, 3, 4}.

    1 = conv1, conv2, pool 1x64, swap; 2 = conv3, conv4, pool 5x3; 3 = conv5, conv6, pool 1x2;
    4 = conv7, conv8, pool 1x2; 5 = conv9, conv10, pool 1x2; 6 = fc11 (4096); 7 = fc12 (4096);
    head = fc13. L = {1, 2, 3, 4} are exactly the authors' InterMix mixing points.
    Every stage ends in ReLU (or max pooling of ReLU outputs), so hidden features are >= 0.
    """

    def __init__(self, num_classes: int) -> None:
        stages: list[nn.Module] = [
            nn.Sequential(  # stage 1: raw-waveform filter bank
                WaveToImage(),  # (B, 1, 1, 66650)
                conv_bn_relu(1, 32, (1, 64), stride=(1, 2)),  # (B, 32, 1, 33294)
                conv_bn_relu(32, 64, (1, 16), stride=(1, 2)),  # (B, 64, 1, 16640)
                max_pool((1, 64)),  # (B, 64, 1, 260): 256-sample (~5.8 ms) frames
                SwapAxes(),  # (B, 1, 64, 260): filters x time image
            ),
            nn.Sequential(
                conv_bn_relu(1, 32, (8, 8)),  # (B, 32, 57, 253)
                conv_bn_relu(32, 32, (8, 8)),  # (B, 32, 50, 246)
                max_pool((5, 3)),  # (B, 32, 10, 82)
            ),
            nn.Sequential(
                conv_bn_relu(32, 64, (1, 4)),  # (B, 64, 10, 79)
                conv_bn_relu(64, 64, (1, 4)),  # (B, 64, 10, 76)
                max_pool((1, 2)),  # (B, 64, 10, 38)
            ),
            nn.Sequential(
                conv_bn_relu(64, 128, (1, 2)),  # (B, 128, 10, 37)
                conv_bn_relu(128, 128, (1, 2)),  # (B, 128, 10, 36)
                max_pool((1, 2)),  # (B, 128, 10, 18)
            ),
            nn.Sequential(
                conv_bn_relu(128, 256, (1, 2)),  # (B, 256, 10, 17)
                conv_bn_relu(256, 256, (1, 2)),  # (B, 256, 10, 16)
                max_pool((1, 2)),  # (B, 256, 10, 8)
            ),
            fc_relu_dropout(256 * 10 * 8, 4096, flatten=True),  # (B, 4096)
            fc_relu_dropout(4096, 4096),  # (B, 4096)
        ]
        super().__init__(stages, head=linear(4096, num_classes))  # (B, num_classes)
