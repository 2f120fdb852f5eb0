"""Prepared datasets: `prepare_dataset` decodes every clip once into per-fold int16 arrays plus a
manifest; `load_prepared` memory-maps them back.

Layout of a prepared folder: `fold{k}.npy` (fold k's clips concatenated, 1-D int16) and
`manifest.json` (written last, atomically: its presence with matching fold checksums is the
completion marker). See docs/data.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from tqdm.auto import tqdm

from intermix_core import __version__
from intermix_core.config import DATASETS, ON_SILENT, OnSilent
from intermix_core.data.raw import (
    RESAMPLER,
    TRIM_ZEROS,
    ClipInfo,
    DataError,
    SilentAudioError,
    load_audio,
    read_metadata,
)

# 2: UrbanSound8K clips are no longer zero-trimmed (data.raw.TRIM_ZEROS); 3: manifest.json carries its own digest
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
_FOLD_FILE = re.compile(r"fold\d+\.npy")
log = logging.getLogger(__name__)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClipRecord(_Model):
    """One prepared clip: where its samples sit in its fold array and which source file they came from."""

    clip_id: str
    label: int
    fold: int
    category: str
    source: str  # path relative to the dataset folder
    source_sha256: str
    offset: int  # first sample in fold{fold}.npy
    length: int  # samples (after trimming, where the dataset is trimmed)


class FoldFile(_Model):
    """One fold array file and its checksum."""

    fold: int
    file: str
    num_clips: int
    num_samples: int
    size_bytes: int
    sha256: str


class SilentClip(_Model):
    """A clip whose every sample is zero after conversion: kept as zeros (on_silent='keep') or left out ('skip')."""

    clip_id: str
    source: str
    reason: str


class Manifest(_Model):
    """What a prepared folder holds; written last, so its presence marks a finished preparation."""

    format_version: int
    dataset: str
    sample_rate: int
    num_classes: int
    classes: list[str | None]  # category name of each label (None if no clip has it)
    folds: list[int]
    resampler: dict[str, float | int | str]  # torchaudio.functional.resample settings
    on_silent: OnSilent
    source_fingerprint: str  # sha256 over every clip's id, label, fold, category, path and file sha256
    fold_files: list[FoldFile]
    clips: list[ClipRecord]
    skipped: list[SilentClip] = []  # silent clips left out (on_silent='skip')
    kept_silent: list[SilentClip] = []  # silent clips kept, untrimmed zeros (on_silent='keep')
    intermix_version: str = __version__
    # sha256 of this manifest with `digest` empty: labels, sample rate and clip records are checked like the fold
    # files are (an edited manifest.json trained silently wrong)
    digest: str = ""

    def computed_digest(self) -> str:
        """The digest this manifest's fields give (what `digest` must hold)."""
        return hashlib.sha256(self.model_copy(update={"digest": ""}).model_dump_json().encode()).hexdigest()

    def sealed(self) -> "Manifest":
        """This manifest with its digest filled in."""
        return self.model_copy(update={"digest": self.computed_digest()})

    def params(self) -> tuple:
        """Everything besides the source files and on_silent that determines the prepared arrays."""
        return (self.format_version, self.dataset, self.sample_rate, self.resampler)

    def data_fingerprint(self) -> str:
        """Which data a fold trains on: the source clips (ids, labels, folds, file hashes) and the silent-clip choice.

        The same for every sample rate of one preparation (each model of a dataset prepares at its
        own rate), different for other clips or relabelled ones; checkpoints and results carry it,
        so a fold trained on one preparation is never resumed, attacked or tabled with another.
        """
        silent = self.on_silent if (self.skipped or self.kept_silent) else "none silent"
        return hashlib.sha256(f"{self.source_fingerprint}/{silent}".encode()).hexdigest()[:16]

    def serves(self, on_silent: str) -> bool:
        """True if this preparation is what `on_silent` would make (without silent clips, every choice is the same)."""
        return self.on_silent == on_silent or not (self.skipped or self.kept_silent)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Serialise preparations of one folder (e.g. parallel fold tasks sharing a volume)."""
    try:
        f = (out / ".lock").open("a")  # "a": taking the lock leaves the file (and its mtime) alone
    except OSError:  # read-only folder: nothing can be written, a finished preparation can still be read
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Resampling one clip is too small a job for several threads; on a busy machine they only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def prepare_dataset(
    source: str | Path, dataset: str, out_dir: str | Path, sample_rate: int, progress: bool = True,
    *, on_silent: OnSilent = "keep",
) -> Manifest:
    """Decode every clip into `out_dir/fold{k}.npy` + `manifest.json`; skip if already prepared from the same files."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise DataError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    sample_rate = int(sample_rate)
    if on_silent not in ON_SILENT:
        raise DataError(f"on_silent must be one of {', '.join(ON_SILENT)}, got {on_silent!r}")
    clips = read_metadata(source, dataset)
    root = Path(source).absolute()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = (FORMAT_VERSION, dataset, sample_rate, RESAMPLER)
    with _locked(out), _one_torch_thread():
        hashes = [_sha256(c.path) for c in tqdm(clips, desc="checksums", unit="clip", disable=not progress)]
        fingerprint = _fingerprint(clips, hashes, root)
        try:
            done = _finished(out, verify=True)
        except DataError as e:
            log.warning("%s: redoing a damaged or unfinished preparation (%s)", out, e)
            done = None
        if (done is not None and done.params() == params and done.source_fingerprint == fingerprint
                and done.serves(on_silent)):
            log.info("%s: already prepared (%s at %d Hz, %d clips)", out, dataset, sample_rate, len(done.clips))
            return done
        if done is not None:
            log.info("%s: replacing a preparation made with other files or settings", out)
        _clear_staging(out)
        staging = out / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            # the new preparation is built whole beside the old one, which stays usable if this fails
            manifest = _build(clips, hashes, root, dataset, sample_rate, on_silent, fingerprint, staging, progress)
            tmp = staging / MANIFEST
            manifest = manifest.sealed()
            tmp.write_text(manifest.model_dump_json(indent=1))
            _fsync(tmp)
            _swap_in(out, staging, manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: prepared %s at %d Hz, %d clips", out, dataset, sample_rate, len(manifest.clips))
    _warn_silent(manifest)
    return manifest


def _warn_silent(manifest: Manifest) -> None:
    """One warning naming how many clips were silent, which, and what was done with them."""
    for clips, what in ((manifest.kept_silent, "kept as zeros (on_silent=keep)"),
                        (manifest.skipped, "left out (on_silent=skip)")):
        if clips:
            names = ", ".join(c.source for c in clips[:5]) + (f" and {len(clips) - 5} more" if len(clips) > 5 else "")
            print(f"warning: {len(clips)} silent clip(s) of {manifest.dataset} {what}: {names}; "
                  "listed in manifest.json", file=sys.stderr)


def _fingerprint(clips: list[ClipInfo], hashes: list[str], root: Path) -> str:
    rows = [[c.clip_id, c.label, c.fold, c.category, _relative(c.path, root), h] for c, h in zip(clips, hashes)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _fsync(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _clear_staging(out: Path) -> None:
    """Remove staging folders an interrupted preparation left behind."""
    for p in out.iterdir():
        if p.name.startswith(".staging-"):
            log.info("%s: removing leftover %s", out, p.name)
            shutil.rmtree(p, ignore_errors=True)


def _swap_in(out: Path, staging: Path, manifest: Manifest) -> None:
    """Replace the preparation in `out` with the complete one in `staging`: old manifest first, new one last."""
    (out / MANIFEST).unlink(missing_ok=True)  # from here until the last rename, `out` holds no preparation
    keep = {ff.file for ff in manifest.fold_files}
    for p in out.iterdir():
        if _FOLD_FILE.fullmatch(p.name) and p.name not in keep:
            log.info("%s: removing %s of an earlier preparation", out, p.name)
            p.unlink()
    for ff in manifest.fold_files:
        os.replace(staging / ff.file, out / ff.file)
    os.replace(staging / MANIFEST, out / MANIFEST)  # the completion marker, last


def _build(
    clips: list[ClipInfo], hashes: list[str], root: Path, dataset: str, sample_rate: int,
    on_silent: OnSilent, fingerprint: str, staging: Path, progress: bool,
) -> Manifest:
    """Decode clips fold by fold into staging, streaming samples to disk so no fold is held in memory whole."""
    by_fold: dict[int, list[tuple[ClipInfo, str]]] = {}
    for c, h in zip(clips, hashes):
        by_fold.setdefault(c.fold, []).append((c, h))
    records: list[ClipRecord] = []
    skipped: list[SilentClip] = []
    kept: list[SilentClip] = []
    fold_files: list[FoldFile] = []
    desc = f"prepare {dataset} @ {sample_rate} Hz"
    with tqdm(total=len(clips), desc=desc, unit="clip", disable=not progress) as bar:
        for fold in sorted(by_fold):
            raw_path, offset, count = staging / f"fold{fold}.raw", 0, 0
            with raw_path.open("wb") as raw:
                for c, h in by_fold[fold]:
                    bar.update()
                    source = _relative(c.path, root)
                    try:
                        pcm = load_audio(c.path, sample_rate, trim=TRIM_ZEROS[dataset])
                    except SilentAudioError as e:
                        if on_silent == "error":
                            raise
                        silent = SilentClip(clip_id=c.clip_id, source=source, reason=str(e))
                        if on_silent == "skip":
                            skipped.append(silent)
                            continue
                        kept.append(silent)
                        pcm = load_audio(c.path, sample_rate, trim=False, silent_ok=True)
                    raw.write(pcm.astype("<i2").tobytes())
                    records.append(ClipRecord(
                        clip_id=c.clip_id, label=c.label, fold=fold, category=c.category,
                        source=source, source_sha256=h, offset=offset, length=len(pcm),
                    ))
                    offset, count = offset + len(pcm), count + 1
            if count:
                fold_files.append(_write_fold(staging, fold, raw_path, offset, count))
            raw_path.unlink()
    num_classes = DATASETS[dataset]["num_classes"]
    classes: list[str | None] = [None] * num_classes
    for c in clips:
        classes[c.label] = c.category
    return Manifest(
        format_version=FORMAT_VERSION, dataset=dataset, sample_rate=sample_rate, num_classes=num_classes,
        classes=classes, folds=[ff.fold for ff in fold_files], resampler=RESAMPLER, on_silent=on_silent,
        source_fingerprint=fingerprint, fold_files=fold_files, clips=records, skipped=skipped, kept_silent=kept,
    )


def _write_fold(staging: Path, fold: int, raw_path: Path, num_samples: int, num_clips: int) -> FoldFile:
    """Turn the raw sample stream into an .npy file (header + the same bytes) and checksum it."""
    path = staging / f"fold{fold}.npy"
    with path.open("wb") as f, raw_path.open("rb") as raw:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i2", "fortran_order": False, "shape": (num_samples,)})
        shutil.copyfileobj(raw, f, 1 << 20)
        f.flush()
        os.fsync(f.fileno())
    return FoldFile(
        fold=fold, file=path.name, num_clips=num_clips, num_samples=num_samples,
        size_bytes=path.stat().st_size, sha256=_sha256(path),
    )


def _finished(out: Path, verify: bool) -> Manifest | None:
    """The manifest of a finished preparation in `out`; None if there is none; DataError if it is damaged."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = Manifest.model_validate_json(path.read_text())
    except (ValidationError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a valid manifest (format {FORMAT_VERSION}): {e}") from e
    if manifest.format_version != FORMAT_VERSION:
        raise DataError(f"{path}: format version {manifest.format_version}, expected {FORMAT_VERSION}; prepare the "
                        "dataset again")
    if manifest.digest != manifest.computed_digest():
        raise DataError(f"{path}: its contents do not match its digest (edited after preparation?); prepare the "
                        "dataset again")
    if problem := _value_problem(manifest):  # a digest recomputed by hand proves nothing: the values are checked too
        raise DataError(f"{path}: {problem}; prepare the dataset again")
    for ff in manifest.fold_files:
        file = out / ff.file
        if not file.is_file():
            raise DataError(f"{out}: incomplete preparation: {ff.file} listed in {MANIFEST} is missing")
        if file.stat().st_size != ff.size_bytes:
            raise DataError(f"{file}: {file.stat().st_size} bytes, manifest says {ff.size_bytes}")
        if verify and _sha256(file) != ff.sha256:
            raise DataError(f"{file}: sha256 does not match {MANIFEST} (corrupted)")
        ends = [r.offset + r.length for r in manifest.clips if r.fold == ff.fold]
        if len(ends) != ff.num_clips or (ends and ends[-1] != ff.num_samples):
            raise DataError(f"{path}: clip records of fold {ff.fold} do not add up to {ff.file}")
    return manifest


def _value_problem(manifest: Manifest) -> str | None:
    """What in a manifest no preparation writes (a label beyond the classes, a fold beyond the dataset's), or None."""
    info = DATASETS.get(manifest.dataset)
    if info is None:
        return f"unknown dataset {manifest.dataset[:40]!r}"
    classes, folds = info["num_classes"], set(range(1, info["num_folds"] + 1))
    if manifest.num_classes != classes or len(manifest.classes) != classes:
        return f"{manifest.num_classes} classes ({len(manifest.classes)} names), but {manifest.dataset} has {classes}"
    if not set(manifest.folds) <= folds or sorted(set(manifest.folds)) != list(manifest.folds):
        return f"folds {manifest.folds[:12]} are not folds of {manifest.dataset} (1..{max(folds)}), ascending"
    if manifest.sample_rate <= 0:
        return f"sample rate {manifest.sample_rate}"
    for r in manifest.clips:
        if not 0 <= r.label < classes:
            return f"clip {r.clip_id[:60]!r}: label {r.label} is not a class of {manifest.dataset} (0..{classes - 1})"
        if r.fold not in manifest.folds or r.offset < 0 or r.length < 1:
            return f"clip {r.clip_id[:60]!r}: fold {r.fold}, offset {r.offset}, length {r.length} do not fit the folds"
    return None


class PreparedData:
    """A prepared folder: per-fold int16 clips (memory-mapped views) and labels."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.manifest = manifest
        self._records = {k: [r for r in manifest.clips if r.fold == k] for k in manifest.folds}
        self._arrays: dict[int, np.ndarray] = {}

    @property
    def sample_rate(self) -> int:
        """Sample rate of every clip, in Hz."""
        return self.manifest.sample_rate

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return self.manifest.num_classes

    @property
    def folds(self) -> list[int]:
        """Fold numbers present, ascending."""
        return list(self.manifest.folds)

    def _fold(self, fold: int) -> list[ClipRecord]:
        if fold not in self._records:
            raise DataError(f"{self.root}: no fold {fold}; folds there: {self.folds}")
        return self._records[fold]

    def _array(self, fold: int) -> np.ndarray:
        if fold not in self._arrays:
            path = self.root / f"fold{fold}.npy"
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # data from a store never unpickles
            if arr.dtype != np.int16 or arr.ndim != 1:
                raise DataError(f"{path}: expected a 1-D int16 array, got {arr.dtype} {arr.shape}")
            self._arrays[fold] = arr
        return self._arrays[fold]

    def clips(self, fold: int) -> list[np.ndarray]:
        """Fold `fold`'s clips as read-only int16 views (copy before writing into them)."""
        records, arr = self._fold(fold), self._array(fold)
        return [arr[r.offset : r.offset + r.length] for r in records]

    def labels(self, fold: int) -> np.ndarray:
        """Fold `fold`'s labels (int64), in the order of `clips(fold)`."""
        return np.array([r.label for r in self._fold(fold)], dtype=np.int64)

    def clip_ids(self, fold: int) -> list[str]:
        """Fold `fold`'s clip ids, in the order of `clips(fold)`."""
        return [r.clip_id for r in self._fold(fold)]

    def __getstate__(self) -> dict:
        # memory maps would pickle as full copies: reopen them in the receiving process instead
        return {**self.__dict__, "_arrays": {}}


def load_prepared(out_dir: str | Path, verify: bool = True) -> PreparedData:
    """Open a finished preparation; checks fold-file sizes, and sha256 too unless verify=False."""
    out = Path(out_dir)
    manifest = _finished(out, verify)
    if manifest is None:
        raise DataError(f"{out}: no finished preparation ({MANIFEST} missing); run prepare_dataset first")
    return PreparedData(out, manifest)
