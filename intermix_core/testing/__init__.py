"""Test data makers built from the clips shipped in the package (no external dataset needed).

Like lhotse's `testing/dummies.py`: tests, benchmarks and a user's own checks build small datasets
in the real on-disk layouts from the real ESC-10 demo clips (`intermix_core/demo_data/esc10_demo`,
CC BY 3.0), so every test runs on a fresh clone.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from intermix_core.data.raw import demo_data_dir

ESC_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
US8K_HEADER = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """Write a metadata CSV (header + rows), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def demo_rows() -> list[dict[str, str]]:
    """The rows of the shipped demo set's meta/esc50.csv (120 clips: folds 1-3, 4 per class and fold)."""
    with (demo_data_dir() / "meta" / "esc50.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def demo_subset(
    dst: str | Path, per_class_per_fold: int = 4, folds: tuple[int, ...] = (1, 2, 3), seconds: float | None = None,
) -> Path:
    """An ESC-50 layout in `dst` with the first `per_class_per_fold` demo clips of each class in `folds`.

    With `seconds`, each clip is cut to that many seconds around its peak (quicker to decode),
    still 22.05 kHz Ogg Vorbis; without it the files are copied as shipped.
    """
    dst, src = Path(dst), demo_data_dir()
    rows, count = [], {}
    for r in sorted(demo_rows(), key=lambda r: r["filename"]):
        key = (int(r["fold"]), r["target"])
        if key[0] in folds and count.get(key, 0) < per_class_per_fold:
            count[key] = count.get(key, 0) + 1
            rows.append(r)
    (dst / "audio").mkdir(parents=True, exist_ok=True)
    for r in rows:
        target = dst / "audio" / r["filename"]
        if seconds is None:
            shutil.copyfile(src / "audio" / r["filename"], target)
        else:
            x, rate = sf.read(src / "audio" / r["filename"], dtype="float32")
            n = int(seconds * rate)
            start = int(np.clip(np.argmax(np.abs(x)) - n // 2, 0, max(len(x) - n, 0)))
            sf.write(target, x[start : start + n], rate, format="OGG", subtype="VORBIS")
    write_csv(dst / "meta" / "esc50.csv", ESC_HEADER, [[r[c] for c in ESC_HEADER] for r in rows])
    return dst


def real_signal(seconds: float = 1.0) -> tuple[np.ndarray, int]:
    """(samples, rate): `seconds` of a real demo clip (rain, 22.05 kHz float32), no zeros at its ends, peak 0.9."""
    x, rate = sf.read(demo_data_dir() / "audio" / "1-17367-A-10.ogg", dtype="float32")
    start = int(0.5 * rate)
    x = x[start : start + int(seconds * rate)]
    if x[0] == 0 or x[-1] == 0 or len(x) < int(seconds * rate):
        raise RuntimeError("demo clip 1-17367-A-10.ogg changed: pick another signal for tests")
    return x / np.abs(x).max() * 0.9, rate


# (file name, fold, classID, class, libsndfile subtype, channels, rate): 8-bit unsigned to float, mono and stereo
US8K_FILES = (
    ("100-3-0-0.wav", 1, 3, "dog_bark", "PCM_U8", 1, 22050),
    ("101-3-0-1.wav", 1, 3, "dog_bark", "PCM_16", 2, 48000),
    ("102-6-0-0.wav", 2, 6, "gun_shot", "PCM_24", 1, 44100),
    ("103-9-0-0.wav", 2, 9, "street_music", "FLOAT", 2, 22050),
)


def urbansound8k_layout(dst: str | Path, signal: np.ndarray | None = None) -> Path:
    """A small UrbanSound8K layout (metadata/UrbanSound8K.csv, audio/fold<N>/*.wav) of real audio, see US8K_FILES."""
    dst = Path(dst)
    x = real_signal()[0] if signal is None else signal
    rows = []
    for name, fold, label, cls, subtype, channels, rate in US8K_FILES:
        data = x if channels == 1 else np.stack([x, x[::-1] * 0.5], axis=1)
        (dst / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
        sf.write(dst / "audio" / f"fold{fold}" / name, data, rate, subtype=subtype)
        rows.append([name, name.split("-")[0], 0.0, 1.0, 1, fold, label, cls])
    write_csv(dst / "metadata" / "UrbanSound8K.csv", US8K_HEADER, rows)
    return dst
