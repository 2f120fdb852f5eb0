"""Data layer: metadata layouts, audio decoding, prepared folders, the shipped demo set.

Uses the real ESC-10 clips shipped in the package (intermix_core.testing builds the layouts), so it runs everywhere.
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
    FORMAT_VERSION,
    ClipInfo,
    DataError,
    Manifest,
    SilentAudioError,
    demo_data_dir,
    load_audio,
    load_prepared,
    prepare_dataset,
    read_metadata,
)
from intermix_core.data.raw import ESC10_TARGETS
from intermix_core.testing import ESC_HEADER, demo_rows, demo_subset, real_signal, urbansound8k_layout
from intermix_core.testing import write_csv as _csv

DEMO = demo_data_dir()


def _esc_rows() -> list[dict[str, str]]:
    return sorted(demo_rows(), key=lambda r: r["filename"])


def _esc_subset(dst: Path, rows: list[dict[str, str]]) -> Path:
    """An ESC-50 layout in `dst` holding `rows`, audio linked to the shipped demo files."""
    (dst / "audio").mkdir(parents=True)
    for r in rows:
        (dst / "audio" / r["filename"]).symlink_to(DEMO / "audio" / r["filename"])
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
    """2 s (44,100 samples) of a real rain clip (float32, peak 0.9), no zeros at its edges."""
    x, _ = real_signal(2.0)
    assert x[0] != 0 and x[-1] != 0
    return x


# ---------------------------------------------------------------- metadata

def test_esc10_metadata_maps_targets_to_labels() -> None:
    clips = read_metadata(DEMO, "esc10")
    assert len(clips) == 120 and all(isinstance(c, ClipInfo) for c in clips)
    assert sorted({c.fold for c in clips}) == [1, 2, 3]
    assert [sum(c.label == k for c in clips) for k in range(10)] == [12] * 10
    names = {c.label: c.category for c in clips}
    assert (names[0], names[1], names[4], names[8], names[9]) == (
        "dog", "rain", "clock_tick", "rooster", "crackling_fire")
    first = clips[0]
    assert first.clip_id == "1-100032-A-0" and first.path == DEMO.absolute() / "audio" / "1-100032-A-0.ogg"
    targets = {r["filename"]: int(r["target"]) for r in _esc_rows()}
    assert all(ESC10_TARGETS[c.label] == targets[c.path.name] for c in clips)


def test_esc50_metadata_keeps_targets() -> None:
    clips = read_metadata(str(DEMO), "esc50")
    assert len(clips) == 120 and {c.label for c in clips} == set(ESC10_TARGETS)


@pytest.fixture(scope="module")
def us8k(tmp_path_factory: pytest.TempPathFactory, signal: np.ndarray) -> Path:
    """A small UrbanSound8K layout: WAV at 8 (unsigned), 16, 24 bit and float, mono/stereo, several rates."""
    return urbansound8k_layout(tmp_path_factory.mktemp("us8k"), signal)


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
    # 8-bit quantisation costs about 1e-3 of this rain clip's power; the other formats are as good as 16-bit
    assert np.sum((got - ref) ** 2) < (3e-3 if subtype == "PCM_U8" else 1e-6) * np.sum(ref**2)
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
    assert load_audio(tmp_path / "z.wav", 16000, trim=False).tolist() == padded.tolist()
    # float samples below half an int16 step round to 0 and are trimmed; one step survives
    tiny = np.array([1e-6, -1e-6, 1 / 32768, 0.0, 0.5, 1e-6], dtype=np.float32)
    sf.write(tmp_path / "t.wav", tiny, 16000, subtype="FLOAT")
    assert load_audio(tmp_path / "t.wav", 16000).tolist() == [1, 0, 16384]


def test_bad_audio_raises_data_error_naming_the_file(tmp_path: Path) -> None:
    good = DEMO / "audio" / "1-17367-A-10.ogg"
    wav = tmp_path / "good.wav"
    sf.write(wav, sf.read(good, dtype="int16")[0][:20000], 22050, subtype="PCM_16")
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
    """20 real clips in ESC-50 layout: one per class in folds 1 and 2, 1.5 s around each clip's peak."""
    root = demo_subset(tmp_path_factory.mktemp("subset") / "esc", per_class_per_fold=1, folds=(1, 2), seconds=1.5)
    assert len(read_metadata(root, "esc10")) == 20
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
    assert manifest.classes[1] == "rain" and manifest.format_version == FORMAT_VERSION
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
        (out / "manifest.json").write_text('{"format_version": 2, "dataset": "esc')
    (out / ".staging-leftover").mkdir()
    with pytest.raises(DataError) as err:
        load_prepared(out)
    assert str(out) in str(err.value) and expected in str(err.value)
    with caplog.at_level(logging.INFO, logger="intermix_core.data"):
        m = prepare_dataset(subset, "esc10", out, 16000, progress=False)
    assert "already prepared" not in caplog.text
    assert m == prepared[1] and not (out / ".staging-leftover").exists()
    assert load_prepared(out).clips(2)[0].tolist() == load_prepared(prepared[0]).clips(2)[0].tolist()


def test_only_esc_datasets_are_zero_trimmed(tmp_path: Path, signal: np.ndarray) -> None:
    """BC learning trims ESC-50/ESC-10 (esc_gen.py) and keeps UrbanSound8K clips whole (urbansound_gen.py)."""
    quiet = np.concatenate([np.zeros(2205, np.float32), signal, np.zeros(1000, np.float32)])
    us8k = urbansound8k_layout(tmp_path / "us8k", quiet)
    m = prepare_dataset(us8k, "urbansound8k", tmp_path / "us8k_prep", 22050, progress=False)
    clip = load_prepared(tmp_path / "us8k_prep").clips(1)[0]  # 100-3-0-0.wav, 8-bit at 22.05 kHz
    assert len(clip) == len(quiet) and not clip[:2000].any() and not clip[-900:].any()
    esc = _esc_subset(tmp_path / "esc", _esc_rows()[:1])
    target = esc / "audio" / _esc_rows()[0]["filename"]
    target.unlink()
    sf.write(target, quiet, 22050, format="OGG", subtype="VORBIS")
    prepare_dataset(esc, "esc10", tmp_path / "esc_prep", 22050, progress=False)
    trimmed = load_prepared(tmp_path / "esc_prep").clips(1)[0]
    assert trimmed[0] != 0 and trimmed[-1] != 0 and len(trimmed) < len(quiet) - 2000
    assert m.format_version == FORMAT_VERSION == 3


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


@pytest.mark.parametrize("on_silent", ["keep", "skip", "error"])
def test_a_silent_clip_is_kept_skipped_or_refused_as_asked(subset: Path, tmp_path: Path, on_silent: str,
                                                           capsys: pytest.CaptureFixture) -> None:
    """One all-zero clip in a real dataset: by default kept (as zeros) with one warning; listed in the manifest."""
    src = Path(shutil.copytree(subset, tmp_path / "src"))
    victim = sorted((src / "audio").iterdir())[3]
    sf.write(victim, np.zeros(22050, np.float32), 22050, format="WAV", subtype="PCM_16")  # the name stays *.ogg
    out = tmp_path / "prep"
    if on_silent == "error":
        with pytest.raises(SilentAudioError, match=rf"{victim.name}: silent"):
            prepare_dataset(src, "esc10", out, 16000, progress=False, on_silent=on_silent)
        return
    manifest = prepare_dataset(src, "esc10", out, 16000, progress=False, on_silent=on_silent)
    err = capsys.readouterr().err
    listed = manifest.kept_silent if on_silent == "keep" else manifest.skipped
    assert [c.source for c in listed] == [f"audio/{victim.name}"]
    assert "warning: 1 silent clip(s) of esc10" in err and victim.name in err and err.count("warning:") == 1
    ids = {c.clip_id for c in manifest.clips}
    assert (listed[0].clip_id in ids) == (on_silent == "keep") and len(ids) == 20 - (on_silent == "skip")
    if on_silent == "keep":
        data = load_prepared(out)
        rec = next(c for c in manifest.clips if c.clip_id == listed[0].clip_id)
        clip = data.clips(rec.fold)[data.clip_ids(rec.fold).index(rec.clip_id)]
        assert len(clip) == 16000 and not clip.any()  # a second of zeros at 16 kHz, untrimmed
    other = "skip" if on_silent == "keep" else "keep"  # another choice is another preparation
    again = prepare_dataset(src, "esc10", out, 16000, progress=False, on_silent=other)
    assert again.on_silent == other and len(again.clips) == 20 - (other == "skip")


@pytest.mark.parametrize("edit", ["relabel", "sample_rate"])
def test_an_edited_manifest_is_refused_in_a_line(prepared: tuple[Path, Manifest], tmp_path: Path, edit: str) -> None:
    """manifest.json is checked like the fold files: relabelled clips or another sample rate no longer train silently."""
    import json
    import shutil

    copy = Path(shutil.copytree(prepared[0], tmp_path / "copy"))
    data = json.loads((copy / "manifest.json").read_text())
    assert len(data["digest"]) == 64
    if edit == "relabel":
        data["clips"][0]["label"] = (data["clips"][0]["label"] + 1) % data["num_classes"]
    else:
        data["sample_rate"] = 8000
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"manifest.json: its contents do not match its digest \(edited after "
                                        r"preparation\?\); prepare the dataset again"):
        load_prepared(copy)
    load_prepared(prepared[0])  # the original still loads


@pytest.mark.parametrize("edit, words", [
    ("label", "label 99 is not a class of esc10 (0..9)"),
    ("fold", "9] are not folds of esc10 (1..5), ascending"),
    ("classes", "50 classes (10 names), but esc10 has 10"),
])
def test_a_manifest_with_a_recomputed_digest_is_checked_value_by_value(prepared: tuple[Path, Manifest], tmp_path: Path,
                                                                       edit: str, words: str) -> None:
    """The digest is unkeyed: someone who edits manifest.json can recompute it. A label of 99 then gave tracebacks
    deep in training; the values themselves are checked, in a line."""
    import shutil

    copy = Path(shutil.copytree(prepared[0], tmp_path / "copy"))
    manifest = Manifest.model_validate_json((copy / "manifest.json").read_text())
    if edit == "label":
        clips = [manifest.clips[0].model_copy(update={"label": 99}), *manifest.clips[1:]]
        manifest = manifest.model_copy(update={"clips": clips})
    elif edit == "fold":
        manifest = manifest.model_copy(update={"folds": [*manifest.folds, 9]})
    else:
        manifest = manifest.model_copy(update={"num_classes": 50})
    (copy / "manifest.json").write_text(manifest.sealed().model_dump_json())  # the digest recomputed
    with pytest.raises(DataError, match=r"manifest\.json: .*" + re.escape(words) + r".*; prepare the dataset again"):
        load_prepared(copy)
