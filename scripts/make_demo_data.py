"""Regenerate the shipped demo dataset `intermix_core/demo_data/esc10_demo/` from ESC-10 in ESC-50 layout.

    python scripts/make_demo_data.py PATH/TO/ESC-10   # an ESC-10 (or ESC-50) folder in the ESC-50 layout

Selection is deterministic: ESC-10 rows of folds 1-3, per (fold, class) the first N file names in
sorted order. Clips are decoded, downmixed to mono, resampled to 22,050 Hz with the project's
resampler and re-encoded as low-quality Ogg Vorbis. The decoded audio is reproducible; the Ogg bytes
are not byte-identical between runs (libsndfile draws a random Ogg stream serial number).
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from intermix_core.data.raw import ESC10_TARGETS, RESAMPLER  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "intermix_core" / "demo_data" / "esc10_demo"
FOLDS = (1, 2, 3)
SAMPLE_RATE = 22050
VORBIS_COMPRESSION = 0.8  # libsndfile compression level: 0 = best quality, 1 = smallest


def select_rows(source: Path, per_class: int) -> tuple[list[str], list[dict[str, str]]]:
    """The source CSV header and the chosen ESC-10 rows (folds 1-3, first `per_class` names per fold and class)."""
    with (source / "meta" / "esc50.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    chosen = []
    for fold in FOLDS:
        for target in ESC10_TARGETS:
            group = sorted(
                (r for r in rows if r["esc10"] == "True" and int(r["fold"]) == fold and int(r["target"]) == target),
                key=lambda r: r["filename"],
            )
            if len(group) < per_class:
                raise SystemExit(f"{source}: fold {fold}, target {target}: {len(group)} clips, need {per_class}")
            chosen += group[:per_class]
    return header, sorted(chosen, key=lambda r: r["filename"])


def loudest(x: np.ndarray, length: int) -> np.ndarray:
    """The `length`-sample window of `x` with the most energy (first one on ties)."""
    if len(x) <= length:
        return x
    energy = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    start = int(np.argmax(energy[length:] - energy[:-length]))
    return x[start : start + length]


def reencode(src: Path, dst: Path, trim_seconds: float | None) -> None:
    """Decode, mono, resample to 22,050 Hz, optionally keep the loudest window, write Ogg Vorbis."""
    x, rate = sf.read(src, dtype="float32", always_2d=True)
    mono = torch.from_numpy(x.mean(axis=1))
    y = AF.resample(mono, rate, SAMPLE_RATE, **RESAMPLER).numpy()
    if trim_seconds:
        y = loudest(y, int(trim_seconds * SAMPLE_RATE))
    sf.write(dst, np.clip(y, -1.0, 1.0), SAMPLE_RATE, format="OGG", subtype="VORBIS",
             compression_level=VORBIS_COMPRESSION)


def attribution(source: Path, rows: list[dict[str, str]], per_class: int, trim_seconds: float | None) -> str:
    """README text: what the subset is, the original license section and each chosen clip's attribution."""
    original = (source / "ORIGINAL_README.md").read_text()
    lic = original[original.index("## License") : original.index("Licensing details for individual clips:")]
    wanted = {f"{r['fold']}-{r['src_file']}-{r['take']}.ogg": r["filename"] for r in rows}
    lines, heading, found = [], None, set()
    for line in original.splitlines():
        if re.fullmatch(r"\*\*\d{3} - .+\*\*:", line.strip()):
            heading = line.strip()
        m = re.match(r"- \*\*\[([^\]]+)\]", line)
        if m and m.group(1) in wanted:
            if heading:
                lines += ["", heading]
                heading = None
            lines.append(line)
            found.add(m.group(1))
    missing = sorted(set(wanted) - found)
    if missing:
        raise SystemExit(f"{source / 'ORIGINAL_README.md'}: no attribution for {', '.join(missing)}")
    trim = f", cut to their loudest {trim_seconds} s" if trim_seconds else ""
    return "\n".join([
        "# ESC-10 demo subset (shipped with intermix)",
        "",
        f"A small subset of the **ESC-10** dataset (K. J. Piczak), itself a subset of ESC-50: {len(rows)} clips,",
        f"folds {', '.join(map(str, FOLDS))}, all 10 classes, {per_class} clips per class per fold (first file names in",
        "sorted order), laid out like ESC-50 (`meta/esc50.csv`, `audio/<fold>-<src>-<take>-<target>.ogg`).",
        "",
        f"**Modified from the original:** re-encoded to mono Ogg Vorbis at {SAMPLE_RATE} Hz at a low quality",
        f"(libsndfile compression level {VORBIS_COMPRESSION}){trim}, to keep the package small. Use it for demos",
        "and smoke tests only, not to report results. Regenerate with `scripts/make_demo_data.py`.",
        "",
        "Distributed under the same license as the original, Creative Commons Attribution 3.0",
        "(CC BY 3.0, http://creativecommons.org/licenses/by/3.0/); the original README's license",
        "section and the attributions of the clips included here follow.",
        "",
        lic.rstrip(),
        "",
        "Licensing details for the individual clips included here (names as in the original ESC-10",
        "release; here each file name also carries the ESC-50 target, e.g. `1-100032-A-0.ogg`):",
        *lines,
        "",
    ])


def main() -> None:
    """Command line: source folder, optional output folder, clips per class, optional trim."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="ESC-10 (or ESC-50) folder in ESC-50 layout, with ORIGINAL_README.md")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--per-class", type=int, default=4, help="clips per class per fold")
    p.add_argument("--trim-seconds", type=float, default=None, help="keep only each clip's loudest window")
    args = p.parse_args()
    header, rows = select_rows(args.source, args.per_class)
    readme = attribution(args.source, rows, args.per_class, args.trim_seconds)
    if args.out.exists():
        if any(args.out.iterdir()) and not (args.out / "meta" / "esc50.csv").is_file():
            raise SystemExit(f"{args.out}: exists and is not a demo dataset; refusing to replace it")
        shutil.rmtree(args.out)
    (args.out / "meta").mkdir(parents=True)
    (args.out / "audio").mkdir()
    for r in rows:
        reencode(args.source / "audio" / r["filename"], args.out / "audio" / r["filename"], args.trim_seconds)
    with (args.out / "meta" / "esc50.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "README.md").write_text(readme)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {len(rows)} clips, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
