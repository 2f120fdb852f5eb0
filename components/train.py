"""Component: train one fold (GPU); its result (and, without a grid store, its checkpoint) is a Model artifact."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE_GPU


@dsl.component(base_image=IMAGE_GPU, install_kfp_package=False)
def train_fold(
    config_json: str,
    fold: int,
    grid_id: str,
    tracking_uri: str,
    store_root: str,
    data: Input[Dataset],
    trained: Output[Model],
    restart: bool = False,
):
    """Train one fold of one grid cell (intermix_core.steps.train_step); empty strings mean 'not set'."""
    from intermix_core.steps import train_step

    # with a store the checkpoint lives there only (it can be hundreds of MB); the artifact keeps the result
    result = train_step(
        config_json, data.path, fold, trained.path, grid_id, tracking_uri or None, store_root or None,
        restart=restart, keep_checkpoint=not store_root,
    )
    cell = f"{result.dataset}/{result.setup}/{result.strategy}/fold{fold}"
    print(f"trained {cell}: test error {result.test_error}")
    trained.metadata.update({"cell": cell, "grid_id": grid_id, "test_error": result.test_error})
