"""Component: raw dataset -> prepared per-fold arrays (a Dataset artifact)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE_CPU


@dsl.component(base_image=IMAGE_CPU, install_kfp_package=False)
def preprocess(source: str, dataset: str, sample_rate: int, prepared: Output[Dataset]):
    """Prepare `dataset` from `source` (folder, s3:// URI or 'demo') at `sample_rate` Hz."""
    from intermix_core.steps import preprocess_step

    manifest = preprocess_step(source, dataset, sample_rate, prepared.path)
    prepared.metadata.update({"dataset": dataset, "sample_rate": sample_rate, "clips": len(manifest.clips)})
