"""Component: raw dataset -> prepared per-fold arrays, written once into the grid store; returns their URI.

No dataset travels as a KFP artifact: train and FGSM tasks get the URI (a string, part of their
cache key, naming dataset, sample rate, source fingerprint and format) and read it through the
node's cache. The small `manifest` artifact is for lineage only; no task consumes it.
"""

from kfp.dsl import Artifact, Output


def preprocess(source: str, dataset: str, sample_rate: int, store_root: str, manifest: Output[Artifact],
               on_silent: str = "keep") -> str:
    """Prepare `dataset` from `source` (folder, s3:// URI or 'demo') at `sample_rate` Hz into the store; its URI.

    on_silent: keep | skip | error, what an all-zero clip does (intermix_core.data).
    """
    from intermix_core.run.steps import prepare_shared_step

    uri, prepared = prepare_shared_step(source, dataset, sample_rate, store_root, on_silent=on_silent)
    with open(manifest.path, "w") as f:
        f.write(prepared.model_dump_json(indent=1))
    manifest.metadata.update({"dataset": dataset, "sample_rate": sample_rate, "clips": len(prepared.clips),
                              "data_uri": uri, "source_fingerprint": prepared.source_fingerprint,
                              "silent_kept": len(prepared.kept_silent), "silent_skipped": len(prepared.skipped)})
    print(f"prepared {dataset} at {sample_rate} Hz: {len(prepared.clips)} clips -> {uri}")
    return uri
