"""Data layer: metadata layouts, audio decoding, prepared folders, the shipped demo set.

Uses real ESC-10 clips from /work/shared/data/esc10 (skipped where absent) and the demo set.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from intermix_core.data import (
    ClipInfo, DataError, Manifest, SilentAudioError, demo_data_dir, load_audio, load_prepared, prepare_dataset,
    read_metadata,
)
from intermix_core.datasets import ESC10_TARGETS

ESC10 = Path("/work/shared/data/esc10")
needs_esc10 = pytest.mark.skipif(not (ESC10 / "meta" / "esc50.csv").is_file(), reason="no ESC-10 copy here")
ESC_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
US8K_HEADER = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _esc_rows(source: Path = ESC10) -> list[dict[str, str]]:
    with (source / "meta" / "esc50.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _esc_subset(dst: Path, rows: list[dict[str, str]]) -> Path:
    """An ESC-50 layout in `dst` holding `rows`, audio linked to the real files."""
    (dst / "audio").mkdir(parents=True)
    for r in rows:
        (dst / "audio" / r["filename"]).symlink_to(ESC10 / "audio" / r["filename"])
    _csv(dst / "meta" / "esc50.csv", ESC_HEADER, [[r[c] for c in ESC_HEADER] for r in rows])
    return dst


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Per-clip resampling is fastest single-threaded on this shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    """1 s of a real rain clip (44.1 kHz float32), no zeros at its edges."""
    if not ESC10.is_dir():
        pytest.skip("no ESC-10 copy here")
    x, _ = sf.read(ESC10 / "audio" / "1-21189-A-10.ogg", dtype="float32")
    x = x[1000:45100]
    assert x[0] != 0 and x[-1] != 0
    return x / np.abs(x).max() * 0.9


# ---------------------------------------------------------------- metadata

@needs_esc10
def test_esc10_metadata_maps_targets_to_labels() -> None:
    clips = read_metadata(ESC10, "esc10")
    assert len(clips) == 400 and all(isinstance(c, ClipInfo) for c in clips)
    assert sorted({c.fold for c in clips}) == [1, 2, 3, 4, 5]
    assert [sum(c.label == k for c in clips) for k in range(10)] == [40] * 10
    names = {c.label: c.category for c in clips}
    assert (names[0], names[1], names[4], names[8], names[9]) == (
        "dog", "rain", "clock_tick", "rooster", "crackling_fire")
    first = clips[0]
    assert first.clip_id == "1-100032-A-0" and first.path == ESC10.absolute() / "audio" / "1-100032-A-0.ogg"
    targets = {r["filename"]: int(r["target"]) for r in _esc_rows()}
    assert all(ESC10_TARGETS[c.label] == targets[c.path.name] for c in clips)


@needs_esc10
def test_esc50_metadata_keeps_targets() -> None:
    clips = read_metadata(str(ESC10), "esc50")
    assert len(clips) == 400 and {c.label for c in clips} == set(ESC10_TARGETS)


@pytest.fixture(scope="module")
def us8k(tmp_path_factory: pytest.TempPathFactory, signal: np.ndarray) -> Path:
    """A small UrbanSound8K layout: WAV at 8 (unsigned), 16, 24 bit and float, mono/stereo, several rates."""
    root = tmp_path_factory.mktemp("us8k")
    files = [  # name, fold, classID, class, subtype, channels, rate
        ("100-3-0-0.wav", 1, 3, "dog_bark", "PCM_U8", 1, 22050),
        ("101-3-0-1.wav", 1, 3, "dog_bark", "PCM_16", 2, 48000),
        ("102-6-0-0.wav", 2, 6, "gun_shot", "PCM_24", 1, 44100),
        ("103-9-0-0.wav", 2, 9, "street_music", "FLOAT", 2, 22050),
    ]
    rows = []
    for name, fold, label, cls, subtype, channels, rate in files:
        x = signal if channels == 1 else np.stack([signal, signal[::-1] * 0.5], axis=1)
        (root / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True)
        sf.write(root / "audio" / f"fold{fold}" / name, x, rate, subtype=subtype)
        rows.append([name, name.split("-")[0], 0.0, 1.0, 1, fold, label, cls])
    _csv(root / "metadata" / "UrbanSound8K.csv", US8K_HEADER, rows)
    return root


def test_urbansound8k_metadata(us8k: Path) -> None:
    clips = read_metadata(us8k, "urbansound8k")
    assert [(c.clip_id, c.fold, c.label, c.category) for c in clips] == [
        ("100-3-0-0", 1, 3, "dog_bark"), ("101-3-0-1", 1, 3, "dog_bark"),
        ("102-6-0-0", 2, 6, "gun_shot"), ("103-9-0-0", 2, 9, "street_music"),
    ]
    assert clips[2].path == us8k.absolute() / "audio" / "fold2" / "102-6-0-0.wav"


def _us8k_variant(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    path = dst / "metadata" / "UrbanSound8K.csv"
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    _csv(path, *edit(rows[0], rows[1:]))
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda h, rows: ([c for c in h if c != "classID"], [r[:6] + r[7:] for r in rows]), "'classID'"),
    (lambda h, rows: (h, rows[:1] + [rows[1][:5] + ["11"] + rows[1][6:]] + rows[2:]), "line 3: field 'fold' = '11'"),
    (lambda h, rows: (h, rows[:2] + [rows[2][:6] + ["dog"] + rows[2][7:]] + rows[3:]), "line 4: field 'classID'"),
    (lambda h, rows: (h, rows + [["404-1-0-0.wav"] + rows[0][1:]]), "line 6: audio file"),
    (lambda h, rows: (h, rows + [rows[0]]), "already listed on line 2"),
    (lambda h, rows: (h, rows[:1] + [rows[1][:7] + ["siren"]] + rows[2:]), "category 'siren' for label 3"),
])
def test_bad_urbansound8k_metadata_names_file_and_field(us8k: Path, tmp_path: Path, edit, expected: str) -> None:
    csv_path = _us8k_variant(us8k, tmp_path / "us8k", edit)
    with pytest.raises(DataError) as err:
        read_metadata(tmp_path / "us8k", "urbansound8k")
    assert str(csv_path) in str(err.value) and expected in str(err.value)


@needs_esc10
@pytest.mark.parametrize("column, value, expected", [
    ("fold", "6", "field 'fold' = '6'; expected an integer in 1..5"),
    ("fold", "", "field 'fold' is empty"),
    ("target", "50", "field 'target' = '50'"),
    ("esc10", "maybe", "field 'esc10' = 'maybe'"),
    ("filename", "../escape.ogg", "expected a bare file name"),
    ("filename", "1-404-A-0.ogg", "1-404-A-0.ogg not found"),
])
def test_bad_esc_metadata_names_file_line_and_field(tmp_path: Path, column: str, value: str, expected: str) -> None:
    rows = _esc_rows()[:3]
    root = _esc_subset(tmp_path / "esc", rows)
    rows[1] = {**rows[1], column: value}
    _csv(root / "meta" / "esc50.csv", ESC_HEADER, [[r[c] for c in ESC_HEADER] for r in rows])
    with pytest.raises(DataError) as err:
        read_metadata(root, "esc10")
    msg = str(err.value)
    assert str(root / "meta" / "esc50.csv") in msg and "line 3" in msg and expected in msg


@needs_esc10
def test_bad_esc_layout(tmp_path: Path) -> None:
    root = _esc_subset(tmp_path / "esc", _esc_rows()[:2])
    with pytest.raises(DataError, match="unknown dataset 'esc100'"):
        read_metadata(root, "esc100")
    rows = _esc_rows()[:2]
    _csv(root / "meta" / "esc50.csv", ESC_HEADER[:1] + ESC_HEADER[2:], [[r[c] for c in ESC_HEADER if c != "fold"]
                                                                       for r in rows])
    with pytest.raises(DataError, match=r"esc50\.csv: missing column\(s\) 'fold'"):
        read_metadata(root, "esc50")
    (root / "meta" / "esc50.csv").unlink()
    with pytest.raises(DataError, match=r"esc50\.csv: metadata file not found"):
        read_metadata(root, "esc50")
    with pytest.raises(DataError, match="dataset folder not found"):
        read_metadata(tmp_path / "nowhere", "esc10")


# ---------------------------------------------------------------- audio

def test_every_layout_file_decodes_to_the_expected_length(us8k: Path) -> None:
    for c in read_metadata(us8k, "urbansound8k"):
        info = sf.info(c.path)
        x = load_audio(c.path, 16000)
        assert x.dtype == np.int16 and x.ndim == 1
        assert len(x) == math.ceil(info.frames * 16000 / info.samplerate)  # edges are nonzero: nothing trimmed
        assert x[0] != 0 and x[-1] != 0


@pytest.mark.parametrize("subtype, fmt", [("PCM_U8", "WAV"), ("PCM_24", "WAV"), ("FLOAT", "WAV"), ("PCM_16", "FLAC")])
def test_bit_depths_and_formats_decode_like_16_bit_wav(
    tmp_path: Path, signal: np.ndarray, subtype: str, fmt: str,
) -> None:
    sf.write(tmp_path / "ref.wav", signal, 48000, subtype="PCM_16")
    sf.write(tmp_path / "x.bin", signal, 48000, subtype=subtype, format=fmt)
    ref = load_audio(tmp_path / "ref.wav", 16000).astype(float)
    got = load_audio(tmp_path / "x.bin", 16000).astype(float)
    assert len(got) == len(ref) == 14700
    assert np.sum((got - ref) ** 2) < 1e-3 * np.sum(ref**2)  # 8-bit quantisation is ~1e-4 here
    if subtype == "PCM_U8":  # unsigned 8-bit: sample u -> (u - 128) * 256 before resampling
        raw = sf.read(tmp_path / "x.bin", dtype="float32")[0]
        assert np.array_equal(np.rint(raw * 32768) % 256, np.zeros(len(raw)))


def test_stereo_is_the_mean_of_channels_and_float_is_clipped(tmp_path: Path) -> None:
    left = np.array([1000, -2000, 3, 32767, 7], dtype=np.int16)
    right = np.array([3000, 2000, 4, 32767, -7], dtype=np.int16)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    assert load_audio(tmp_path / "s.wav", 16000).tolist() == [2000, 0, 4, 32767]  # 3.5 -> 4 (half to even)
    sf.write(tmp_path / "f.wav", np.array([0.5, 1.5, -1.5, -1.0, 0.25], dtype=np.float32), 16000, subtype="FLOAT")
    assert load_audio(tmp_path / "f.wav", 16000).tolist() == [16384, 32767, -32768, -32768, 8192]


def test_resampling_yields_the_expected_length(tmp_path: Path, signal: np.ndarray) -> None:
    for rate, target in [(48000, 16000), (22050, 44100), (44100, 16000), (16000, 16000)]:
        sf.write(tmp_path / "r.wav", signal, rate, subtype="FLOAT")
        x = load_audio(tmp_path / "r.wav", target)
        assert len(x) == math.ceil(len(signal) * target / rate), (rate, target)


def test_trimming_removes_exact_zeros_only(tmp_path: Path) -> None:
    core = np.array([5, 0, 0, -3, 0, 1], dtype=np.int16)
    padded = np.concatenate([np.zeros(100, np.int16), core, np.zeros(37, np.int16)])
    sf.write(tmp_path / "z.wav", padded, 16000, subtype="PCM_16")
    assert load_audio(tmp_path / "z.wav", 16000).tolist() == core.tolist()
    # float samples below half an int16 step round to 0 and are trimmed; one step survives
    tiny = np.array([1e-6, -1e-6, 1 / 32768, 0.0, 0.5, 1e-6], dtype=np.float32)
    sf.write(tmp_path / "t.wav", tiny, 16000, subtype="FLOAT")
    assert load_audio(tmp_path / "t.wav", 16000).tolist() == [1, 0, 16384]


@needs_esc10
def test_bad_audio_raises_data_error_naming_the_file(tmp_path: Path) -> None:
    good = ESC10 / "audio" / "1-21189-A-10.ogg"
    wav = tmp_path / "good.wav"
    sf.write(wav, sf.read(good, dtype="int16")[0][:20000], 44100, subtype="PCM_16")
    cases = {
        "empty.wav": (b"", "empty file"),
        "text.wav": (b"this is not audio\n" * 20, "not readable as audio"),
        "truncated.wav": (wav.read_bytes()[:20000], "truncated: WAV data chunk declares"),
        "header_only.wav": (wav.read_bytes()[:40], "not readable as audio"),
        "truncated.ogg": (good.read_bytes()[: good.stat().st_size // 2], "truncated: Ogg page"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError) as err:
            load_audio(path, 16000)
        assert str(path) in str(err.value) and expected in str(err.value), name
    sf.write(tmp_path / "silent.wav", np.zeros(1000, np.float32) + 1e-7, 16000, subtype="FLOAT")
    with pytest.raises(SilentAudioError, match=r"silent\.wav: silent"):
        load_audio(tmp_path / "silent.wav", 16000)
    with pytest.raises(DataError, match=r"missing\.wav: audio file not found"):
        load_audio(tmp_path / "missing.wav", 16000)
    assert len(load_audio(good, 16000)) > 0  # the intact originals decode


# ---------------------------------------------------------------- prepared folders

@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real clips in ESC-50 layout: one per class in folds 1 and 2."""
    if not ESC10.is_dir():
        pytest.skip("no ESC-10 copy here")
    rows, seen = [], set()
    for r in _esc_rows():
        key = (r["fold"], r["target"])
        if r["fold"] in ("1", "2") and key not in seen:
            seen.add(key)
            rows.append(r)
    assert len(rows) == 20
    root = tmp_path_factory.mktemp("subset") / "esc"
    _esc_subset(root, rows)
    for r in rows:  # keep the test quick: 1.5 s around each clip's peak, still 44.1 kHz Ogg Vorbis
        path = root / "audio" / r["filename"]
        x, rate = sf.read(path, dtype="float32")
        start = int(np.clip(np.argmax(np.abs(x)) - 0.75 * rate, 0, len(x) - 1.5 * rate))
        path.unlink()
        sf.write(path, x[start : start + int(1.5 * rate)], rate, format="OGG", subtype="VORBIS")
    return root


@pytest.fixture(scope="module")
def prepared(subset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("prepared") / "esc10_16k"
    return out, prepare_dataset(subset, "esc10", out, 16000, progress=False)


def _copy(prepared: tuple[Path, Manifest], tmp_path: Path) -> Path:
    return Path(shutil.copytree(prepared[0], tmp_path / "copy"))


def test_prepared_folds_match_load_audio(subset: Path, prepared: tuple[Path, Manifest]) -> None:
    out, manifest = prepared
    assert (out / "manifest.json").is_file() and sorted(p.name for p in out.glob("fold*")) == [
        "fold1.npy", "fold2.npy"]
    assert (manifest.dataset, manifest.sample_rate, manifest.num_classes, manifest.folds) == ("esc10", 16000, 10, [1, 2])
    assert manifest.classes[1] == "rain" and manifest.format_version == 1
    data = load_prepared(out)
    assert (data.sample_rate, data.num_classes, data.folds) == (16000, 10, [1, 2])
    by_id = {c.clip_id: c for c in read_metadata(subset, "esc10")}
    for fold in data.folds:
        clips, labels, ids = data.clips(fold), data.labels(fold), data.clip_ids(fold)
        assert len(clips) == 10 and sorted(labels.tolist()) == list(range(10))
        for clip, label, cid in zip(clips, labels, ids):
            info = by_id[cid]
            assert info.fold == fold and info.label == label and clip.dtype == np.int16
            assert np.array_equal(clip, load_audio(info.path, 16000))
    rec = manifest.clips[0]
    assert rec.source_sha256 == hashlib.sha256((subset / rec.source).read_bytes()).hexdigest()
    ff = manifest.fold_files[0]
    assert ff.sha256 == hashlib.sha256((out / ff.file).read_bytes()).hexdigest()
    assert Manifest.model_validate_json((out / "manifest.json").read_text()) == manifest
    with pytest.raises(DataError, match="no fold 3"):
        data.clips(3)


def test_second_call_skips_and_leaves_files_untouched(
    subset: Path, prepared: tuple[Path, Manifest], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    out = _copy(prepared, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with caplog.at_level(logging.INFO, logger="intermix_core.data"):
        again = prepare_dataset(subset, "esc10", out, 16000, progress=False)
    assert "already prepared" in caplog.text
    assert again == prepared[1]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_other_rate_or_changed_source_is_redone(
    subset: Path, prepared: tuple[Path, Manifest], tmp_path: Path,
) -> None:
    out = _copy(prepared, tmp_path)
    m = prepare_dataset(subset, "esc10", out, 8000, progress=False)
    assert m.sample_rate == 8000 and load_prepared(out).sample_rate == 8000
    changed = Path(shutil.copytree(subset, tmp_path / "changed", symlinks=True))
    victim = changed / "audio" / prepared[1].clips[0].source.split("/")[-1]
    victim.unlink()
    sf.write(victim, np.linspace(-0.5, 0.5, 8000, dtype=np.float32), 16000, format="OGG", subtype="VORBIS")
    m2 = prepare_dataset(changed, "esc10", out, 8000, progress=False)
    assert m2.source_fingerprint != m.source_fingerprint and m2.clips[0].length != m.clips[0].length


@pytest.mark.parametrize("damage, expected", [
    ("no_manifest", "manifest.json missing"),
    ("no_fold_file", "fold2.npy listed in manifest.json is missing"),
    ("short_fold_file", "fold1.npy: "),
    ("flipped_byte", "fold2.npy: sha256 does not match"),
    ("bad_manifest", "not a valid manifest"),
])
def test_damaged_preparation_is_refused_and_redone(
    subset: Path, prepared: tuple[Path, Manifest], tmp_path: Path, caplog: pytest.LogCaptureFixture,
    damage: str, expected: str,
) -> None:
    out = _copy(prepared, tmp_path)
    if damage == "no_manifest":
        (out / "manifest.json").unlink()
    elif damage == "no_fold_file":
        (out / "fold2.npy").unlink()
    elif damage == "short_fold_file":
        (out / "fold1.npy").write_bytes((out / "fold1.npy").read_bytes()[:-100])
    elif damage == "flipped_byte":
        raw = bytearray((out / "fold2.npy").read_bytes())
        raw[500] ^= 0xFF
        (out / "fold2.npy").write_bytes(bytes(raw))
    else:
        (out / "manifest.json").write_text('{"format_version": 1, "dataset": "esc')
    (out / ".staging-leftover").mkdir()
    with pytest.raises(DataError) as err:
        load_prepared(out)
    assert str(out) in str(err.value) and expected in str(err.value)
    with caplog.at_level(logging.INFO, logger="intermix_core.data"):
        m = prepare_dataset(subset, "esc10", out, 16000, progress=False)
    assert "already prepared" not in caplog.text
    assert m == prepared[1] and not (out / ".staging-leftover").exists()
    assert load_prepared(out).clips(2)[0].tolist() == load_prepared(prepared[0]).clips(2)[0].tolist()


def test_prepared_data_pickles_without_the_arrays(prepared: tuple[Path, Manifest]) -> None:
    data = load_prepared(prepared[0], verify=False)
    first = data.clips(1)[0]
    blob = pickle.dumps(data)
    assert len(blob) < 100_000
    assert np.array_equal(pickle.loads(blob).clips(1)[0], first)


# ---------------------------------------------------------------- demo set

def test_demo_dataset_ships_small_and_loads() -> None:
    root = demo_data_dir()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 6_000_000
    clips = read_metadata(root, "esc10")
    assert len(clips) == 120 and sorted({c.fold for c in clips}) == [1, 2, 3]
    assert all(sum(c.fold == f and c.label == k for c in clips) == 4 for f in (1, 2, 3) for k in range(10))
    readme = (root / "README.md").read_text()
    assert "CC BY 3.0" in readme and "Piczak" in readme and "creativecommons.org/licenses/by/3.0" in readme
    for c in clips:
        fold, src, take, _ = c.clip_id.split("-")
        assert f"[{fold}-{src}-{take}.ogg]" in readme
    for c in clips[::12]:
        info = sf.info(c.path)
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "VORBIS")
        assert len(load_audio(c.path, 16000)) > 1000


def test_failed_re_prepare_keeps_the_earlier_preparation(tmp_path: Path) -> None:
    """A re-prepare that fails midway (a broken clip in the last fold) leaves the old preparation loadable."""
    source = Path(shutil.copytree(demo_data_dir(), tmp_path / "src"))
    out = tmp_path / "prepared"
    first = prepare_dataset(source, "esc10", out, 8000, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    last = [c for c in first.clips if c.fold == max(first.folds)][-1]  # earlier folds are built when this one fails
    victim = source / last.source
    victim.write_bytes(victim.read_bytes()[:3000])
    with pytest.raises(DataError, match=re.escape(str(victim))):
        prepare_dataset(source, "esc10", out, 16000, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not list(out.glob(".staging-*"))
    data = load_prepared(out)
    assert data.sample_rate == 8000 and data.manifest == first
