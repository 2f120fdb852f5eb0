"""PiczakCNN (Piczak, MLSP 2015), short-segment variant, as a stage list with an in-model log-mel front end.

The model takes waveforms like every other model here: stage 1 computes the features (60-band
log-mel spectrogram and its deltas as two channels; 1024-sample window, 512 hop, 22.05 kHz), so
layer 0 stays the waveform and BC/InterMix input-space mixing works unchanged.

Input: 21,504 samples at 22.05 kHz (0.975 s) -> exactly 41 frames with `center=False`
(1 + (21504 - 1024) / 512 = 41). Piczak computed features on whole clips and cut 41-frame
segments, so every frame of a segment is a full window of real audio; `center=False` on a crop of
40 * 512 + 1024 samples reproduces that, with no reflection padding at the crop edges.
"""

from __future__ import annotations

import torch
from torch import nn
from torchaudio import transforms

from intermix_core.models.base import StagedModel, at_least_float32, register_model

# LeCun-normal fc layers (Chainer default): He-normal ones on top of the max-pooled, un-normalised
# conv features gave initial logits with a standard deviation of about 6 and diverging training
from intermix_core.models.envnet import DROPOUT, fc_relu_dropout

N_MELS = 60
N_FFT = 1024
HOP = 512


class LogMelDeltas(nn.Module):
    """Waveforms (B, T) -> (B, 2, 60, frames): log-mel (dB) and its deltas, standardized per channel.

    Always computed in float32 (autocast off): the power spectrum of quiet audio underflows in
    float16. Silence is safe: power is floored at 1e-10 (-100 dB) before the log, so the log of 0
    never happens and values stay finite with finite gradients.
    """

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        # librosa-style mel filters (Slaney scale, area-normalized) and power spectrum, as Piczak used.
        self.melspec = transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=N_FFT, win_length=N_FFT, hop_length=HOP, n_mels=N_MELS,
            power=2.0, center=False, norm="slaney", mel_scale="slaney",
        )
        # 10 log10(max(power, 1e-10)), clipped to 80 dB below each example's peak (librosa's default).
        self.to_db = transforms.AmplitudeToDB(stype="power", top_db=80.0)
        self.deltas = transforms.ComputeDeltas(win_length=9)  # librosa.feature.delta's default width
        # Not in the paper: raw dB values (about -100..+40) blow up activations of an unnormalized
        # network; a non-affine batch norm standardizes each channel with running dataset statistics.
        self.norm = nn.BatchNorm2d(2, affine=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel + delta channels (B, 2, 60, 41) of waveforms (B, T), each example on its own (no batch statistics)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            # (B, 1, T): the channel axis keeps AmplitudeToDB's top_db clipping per example, not per batch.
            x = at_least_float32(x).unsqueeze(1)
            logmel = self.to_db(self.melspec(x))  # (B, 1, 60, 41)
            return torch.cat([logmel, self.deltas(logmel)], dim=1)  # (B, 2, 60, 41)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute standardized log-mel + delta channels from waveforms."""
        feats = self.features(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.norm(feats)


def he_init(layer: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """He-normal weights (ReLU follows) and zero bias."""
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
    nn.init.zeros_(layer.bias)
    return layer


@register_model("piczak_cnn")
class PiczakCNN(StagedModel):
    """PiczakCNN (Piczak 2015), short segments: 22.05 kHz, T = 21,504 (41 frames); M = 4, L = {1, 2, 3, 4}.

    1 = log-mel + deltas, conv 80 x (57x6), pool 4x3 stride 1x3; 2 = dropout 0.5, conv 80 x (1x3), pool 1x3;
    3 = fc 5000; 4 = fc 5000; head = fc. The feature extraction sits inside stage 1 (layer 0 is
    the waveform), so mixing at 1 mixes the first convolutional feature maps. Every stage ends
    in ReLU (or max pooling of ReLU outputs), so hidden features are >= 0.
    """

    def __init__(self, num_classes: int) -> None:
        stages: list[nn.Module] = [
            nn.Sequential(
                LogMelDeltas(self.sample_rate),  # (B, 2, 60, 41): channels x mel bands x frames
                he_init(nn.Conv2d(2, 80, (57, 6))),  # (B, 80, 4, 36): nearly full-height filters
                nn.ReLU(inplace=True),
                nn.MaxPool2d((4, 3), stride=(1, 3)),  # (B, 80, 1, 12)
            ),
            nn.Sequential(
                nn.Dropout(DROPOUT),  # Piczak's dropout on the input of the second conv (input_include_probs c1: 0.5)
                he_init(nn.Conv2d(80, 80, (1, 3))),  # (B, 80, 1, 10)
                nn.ReLU(inplace=True),
                nn.MaxPool2d((1, 3), stride=(1, 3)),  # (B, 80, 1, 3)
            ),
            fc_relu_dropout(80 * 1 * 3, 5000, flatten=True),  # (B, 5000)
            fc_relu_dropout(5000, 5000),  # (B, 5000)
        ]
        head = nn.Linear(5000, num_classes)  # (B, num_classes); softmax lives in the loss
        nn.init.normal_(head.weight, std=5000**-0.5)
        nn.init.zeros_(head.bias)
        super().__init__(stages, head)
