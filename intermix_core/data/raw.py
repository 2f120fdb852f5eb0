"""Raw datasets as published: metadata layouts (ESC-50/ESC-10, UrbanSound8K) and audio decoding.

`read_metadata` turns a dataset folder into `ClipInfo`s; `load_audio` turns one file into the
reference preprocessing's int16 waveform (mono, resampled, trimmed). See docs/data.md.
"""

from __future__ import annotations

import csv
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from intermix_core.common.text import cut
from intermix_core.config import DATASETS

# ESC-50 targets of the ten ESC-10 classes; label i of ESC-10 is ESC-50 target ESC10_TARGETS[i].
ESC10_TARGETS = (0, 10, 11, 20, 38, 21, 40, 41, 1, 12)

# Kaiser-windowed sinc, close to FFmpeg's default resampler (cutoff 0.97, Kaiser beta 9) that the
# reference preparation used through `ffmpeg -ar`. Stored in every manifest.
RESAMPLER: dict[str, float | int | str] = {
    "resampling_method": "sinc_interp_kaiser",
    "lowpass_filter_width": 16,
    "rolloff": 0.97,
    "beta": 9.0,
}

# Leading and trailing zeros are trimmed for ESC-50/ESC-10 only: BC learning's dataset_gen/esc_gen.py
# trims (sound.nonzero() min..max), dataset_gen/urbansound_gen.py keeps UrbanSound8K clips whole.
TRIM_ZEROS: dict[str, bool] = {"esc10": True, "esc50": True, "urbansound8k": False}

_ESC_COLUMNS = ("filename", "fold", "target", "category", "esc10")
_US8K_COLUMNS = ("slice_file_name", "fold", "classID", "class")


class DataError(ValueError):
    """Bad dataset input: metadata, audio file or prepared folder; the message names the file."""


class SilentAudioError(DataError):
    """An audio file whose every sample is zero at 16-bit (nothing left after trimming)."""


@dataclass(frozen=True, slots=True)
class ClipInfo:
    """One labelled clip of a dataset's metadata."""

    clip_id: str
    path: Path
    label: int
    fold: int
    category: str


def demo_data_dir() -> Path:
    """Folder of the shipped demo dataset (ESC-10 subset in ESC-50 layout): pass it to `read_metadata`."""
    path = Path(__file__).resolve().parent.parent / "demo_data" / "esc10_demo"  # intermix_core/demo_data
    if not (path / "meta" / "esc50.csv").is_file():
        raise DataError(f"{path}: demo dataset missing (was intermix installed without its package data?)")
    return path


def read_metadata(source: str | Path, dataset: str) -> list[ClipInfo]:
    """Clips listed in a dataset folder's metadata, in file order, each checked for an existing audio file."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}: expected one of {', '.join(sorted(DATASETS))}")
    root = Path(source).absolute()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    clips = _read_urbansound8k(root) if dataset == "urbansound8k" else _read_esc(root, dataset)
    if not clips:
        raise DataError(f"{root}: metadata lists no {dataset} clips")
    return clips


class _Rows:
    """CSV rows with their line numbers, and typed field access whose errors name file, line and field."""

    def __init__(self, path: Path, required: tuple[str, ...], layout: str) -> None:
        if not path.is_file():
            raise DataError(f"{path}: metadata file not found (expected the {layout} layout)")
        self.path = path
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as UTF-8") from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                    f"expected {', '.join(required)}, found {cut(', '.join(header), 200) or 'no header'}"
                )
            self.rows = [(reader.line_num, row) for row in reader]
        except csv.Error as e:  # e.g. a field over the csv module's size limit
            raise DataError(f"{path}, line {reader.line_num}: not a readable CSV row ({e})") from None

    def text(self, line: int, row: dict, field: str) -> str:
        value = (row.get(field) or "").strip()
        if not value:
            raise DataError(f"{self.path}, line {line}: field {field!r} is empty")
        return value

    def integer(self, line: int, row: dict, field: str, lo: int, hi: int) -> int:
        raw = self.text(line, row, field)
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise DataError(f"{self.path}, line {line}: field {field!r} = {raw!r}; expected an integer in {lo}..{hi}")
        return value

    def flag(self, line: int, row: dict, field: str) -> bool:
        raw = self.text(line, row, field)
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise DataError(f"{self.path}, line {line}: field {field!r} = {raw!r}; expected True or False")

    def audio(self, line: int, row: dict, field: str, folder: Path) -> Path:
        name = self.text(line, row, field)
        if Path(name).name != name or name in (".", ".."):
            raise DataError(f"{self.path}, line {line}: field {field!r} = {name!r}; expected a bare file name")
        path = folder / name
        if not path.is_file():
            raise DataError(f"{self.path}, line {line}: audio file {path} not found")
        return path


def _check_clips(rows: _Rows, clips: list[tuple[int, ClipInfo]]) -> list[ClipInfo]:
    """Reject duplicate clip ids and labels named by two different categories."""
    seen: dict[str, int] = {}
    names: dict[int, tuple[str, int]] = {}
    for line, c in clips:
        if c.clip_id in seen:
            raise DataError(f"{rows.path}, line {line}: clip {c.clip_id!r} already listed on line {seen[c.clip_id]}")
        seen[c.clip_id] = line
        name, first = names.setdefault(c.label, (c.category, line))
        if name != c.category:
            raise DataError(
                f"{rows.path}, line {line}: category {c.category!r} for label {c.label}, "
                f"but line {first} names it {name!r}"
            )
    return [c for _, c in clips]


def _read_esc(root: Path, dataset: str) -> list[ClipInfo]:
    rows = _Rows(root / "meta" / "esc50.csv", _ESC_COLUMNS, "ESC-50: meta/esc50.csv + audio/<filename>")
    max_fold = DATASETS[dataset]["num_folds"]
    clips = []
    for line, row in rows.rows:
        target = rows.integer(line, row, "target", 0, 49)
        if dataset == "esc10":
            if not rows.flag(line, row, "esc10"):
                continue
            if target not in ESC10_TARGETS:
                raise DataError(
                    f"{rows.path}, line {line}: field 'target' = {target} on an esc10 row; "
                    f"expected one of the ESC-10 targets {list(ESC10_TARGETS)}"
                )
            label = ESC10_TARGETS.index(target)
        else:
            label = target
        path = rows.audio(line, row, "filename", root / "audio")
        fold = rows.integer(line, row, "fold", 1, max_fold)
        clips.append((line, ClipInfo(path.stem, path, label, fold, rows.text(line, row, "category"))))
    return _check_clips(rows, clips)


def _read_urbansound8k(root: Path) -> list[ClipInfo]:
    rows = _Rows(
        root / "metadata" / "UrbanSound8K.csv", _US8K_COLUMNS,
        "UrbanSound8K: metadata/UrbanSound8K.csv + audio/fold<N>/<slice_file_name>",
    )
    clips = []
    for line, row in rows.rows:
        fold = rows.integer(line, row, "fold", 1, DATASETS["urbansound8k"]["num_folds"])
        label = rows.integer(line, row, "classID", 0, DATASETS["urbansound8k"]["num_classes"] - 1)
        path = rows.audio(line, row, "slice_file_name", root / "audio" / f"fold{fold}")
        clips.append((line, ClipInfo(path.stem, path, label, fold, rows.text(line, row, "class"))))
    return _check_clips(rows, clips)


# Bounds on what a clip's header may declare, checked before anything is decoded. Every dataset here is short
# clips (ESC-50: 5 s, UrbanSound8K: at most 4 s) recorded at 8..192 kHz; a 200 KB WAV declaring 1 Hz asked the
# resampler for 17.6 GB. Far wider than any real clip, far below a machine's memory.
MIN_SOURCE_RATE, MAX_SOURCE_RATE = 1000, 384_000
MAX_CLIP_SECONDS = 60.0
MAX_CHANNELS = 16


def _check_header(path: Path, rate: int, frames: int, channels: int) -> None:
    """Refuse a clip whose declared rate, length or channel count no recording of these datasets has (DataError)."""
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise DataError(f"{path}: declares a sample rate of {rate} Hz; expected {MIN_SOURCE_RATE}.."
                        f"{MAX_SOURCE_RATE} Hz (not decoded)")
    if frames / rate > MAX_CLIP_SECONDS:
        raise DataError(f"{path}: declares {frames / rate:.0f} s of audio ({frames} frames at {rate} Hz); clips of "
                        f"these datasets last seconds, at most {MAX_CLIP_SECONDS:.0f} s are read (not decoded)")
    if not 1 <= channels <= MAX_CHANNELS:
        raise DataError(f"{path}: declares {channels} channels; expected 1..{MAX_CHANNELS} (not decoded)")


def load_audio(path: Path, sample_rate: int, trim: bool = True, silent_ok: bool = False) -> np.ndarray:
    """Decode a file to the reference input: mono mean, resampled, int16 (rounded, clipped), zeros trimmed if `trim`.

    A clip whose every sample is zero raises SilentAudioError, unless `silent_ok` (then its zeros, untrimmed).
    """
    path = Path(path)
    if sample_rate <= 0:
        raise DataError(f"{path}: sample_rate must be positive, got {sample_rate}")
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with sf.SoundFile(path) as f:
            declared, rate, fmt = f.frames, f.samplerate, f.format
            _check_header(path, rate, declared, f.channels)  # before decoding: a header can ask for gigabytes
            data = f.read(dtype="float32", always_2d=True)  # (frames, channels), in [-1, 1)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise DataError(f"{path}: not readable as audio ({e})") from e
    if data.shape[0] == 0:
        raise DataError(f"{path}: no audio frames")
    if data.shape[0] < declared:
        raise DataError(f"{path}: truncated: header declares {declared} frames, only {data.shape[0]} decoded")
    _check_complete(path, fmt)
    if not np.isfinite(data).all():
        raise DataError(f"{path}: contains NaN or infinite samples")
    mono = data.mean(axis=1)
    if rate != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), rate, sample_rate, **RESAMPLER).numpy()
    pcm = np.clip(np.rint(mono * 32768.0), -32768, 32767).astype(np.int16)
    nonzero = np.flatnonzero(pcm)
    if nonzero.size == 0:
        if silent_ok:
            return pcm
        raise SilentAudioError(f"{path}: silent: every sample is zero after conversion to 16-bit at {sample_rate} Hz")
    return pcm[nonzero[0] : nonzero[-1] + 1] if trim else pcm


def _check_complete(path: Path, fmt: str) -> None:
    """Catch truncations libsndfile reads silently: a short WAV data chunk, an Ogg stream cut before its end."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if fmt in ("WAV", "WAVEX"):
            problem = _wav_problem(f, size)
        elif fmt == "OGG":
            problem = _ogg_problem(f, size)
        else:
            problem = None
    if problem:
        raise DataError(f"{path}: truncated: {problem}")


def _wav_problem(f, size: int) -> str | None:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF":  # RIFX/RF64: leave to libsndfile
        return None
    pos = 12
    while pos + 8 <= size:
        f.seek(pos)
        chunk, length = struct.unpack("<4sI", f.read(8))
        if chunk == b"data":
            present = size - pos - 8
            # 0 and 0xFFFFFFFF mark streamed files whose writer never filled the size in
            if length not in (0, 0xFFFFFFFF) and present < length:
                return f"WAV data chunk declares {length} bytes, {present} present"
            return None
        pos += 8 + length + (length & 1)
    return "no WAV data chunk before the end of the file"


def _ogg_problem(f, size: int) -> str | None:
    pos, last_flags = 0, 0
    while pos < size:
        f.seek(pos)
        head = f.read(27)
        if len(head) < 27 or head[:4] != b"OggS":
            return f"Ogg page at byte {pos} is cut or corrupt"
        lacing = f.read(head[26])
        end = pos + 27 + len(lacing) + sum(lacing)
        if len(lacing) < head[26] or end > size:
            return f"Ogg page at byte {pos} ends past the end of the file ({size} bytes)"
        pos, last_flags = end, head[5]
    if not last_flags & 0x04:
        return "Ogg stream ends without its end-of-stream page"
    return None
