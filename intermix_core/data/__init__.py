"""Data: raw datasets as published (`raw`: metadata layouts, audio decoding) and their preparation (`prepare`).

`prepare_dataset` decodes a dataset once into per-fold int16 arrays and a manifest; `load_prepared`
maps them back for training. Where prepared datasets live in a store is `intermix_core.store.prepared`.
"""

from intermix_core.data.prepare import (
    FORMAT_VERSION,
    MANIFEST,
    ClipRecord,
    FoldFile,
    Manifest,
    PreparedData,
    SilentClip,
    load_prepared,
    prepare_dataset,
)
from intermix_core.data.raw import ClipInfo, DataError, SilentAudioError, demo_data_dir, load_audio, read_metadata

__all__ = [
    "FORMAT_VERSION", "MANIFEST", "ClipRecord", "FoldFile", "Manifest", "PreparedData", "SilentClip", "load_prepared",
    "prepare_dataset", "ClipInfo", "DataError", "SilentAudioError", "demo_data_dir", "load_audio", "read_metadata",
]
