"""Component: train one fold; its result (and, without a grid store, its checkpoint) is a Model artifact.

With a store the checkpoint lives there only (it can be hundreds of MB). `device` is 'cuda' on GPU
tasks (no silent CPU fallback: intermix_core.method.devices), 'cpu' on CPU-only nodes, 'auto' locally.
INTERMIX_DATA_CACHE, set by the pipeline when a cache volume is mounted, is the node's dataset
cache. When the node's NVIDIA driver supports an older CUDA than the image's torch is built for,
the task's log starts with one line naming both (intermix_core.method.devices.cuda_driver_note).
(The function's source travels in every compiled task: its comments stay here.)
"""

from kfp.dsl import Model, Output


def train_fold(
    config_json: str,
    fold: int,
    grid_id: str,
    tracking_uri: str,
    store_root: str,
    data_uri: str,
    trained: Output[Model],
    restart: bool = False,
    device: str = "auto",
):
    """Train one fold of one grid cell (intermix_core.run.steps.train_step); empty strings mean 'not set'."""
    from intermix_core.run.steps import task_data, train_step, warn_old_driver

    warn_old_driver(device)
    with task_data(data_uri) as data:
        result = train_step(
            config_json, data, fold, trained.path, grid_id, tracking_uri or None, store_root or None,
            restart=restart, keep_checkpoint=not store_root, device=device,
        )
    print(f"trained {result.label}: test error {result.test_error}")
    trained.metadata.update({"cell": result.label, "grid_id": grid_id, "test_error": result.test_error})


def train_pack(
    config_json: str,
    folds: str,
    grid_id: str,
    tracking_uri: str,
    store_root: str,
    data_uri: str,
    trained: Output[Model],
    restart: bool = False,
    device: str = "auto",
):
    """Train a pack of folds ('1 2 3') of one cell into trained/fold<f> (intermix_core.run.steps.train_pack_task)."""
    from intermix_core.run.steps import task_data, train_pack_task, warn_old_driver

    warn_old_driver(device)
    with task_data(data_uri) as data:
        failed = train_pack_task(config_json, data, folds, trained.path, grid_id, tracking_uri or None,
                                 store_root or None, restart=restart, device=device)
    trained.metadata.update({"folds": folds, "grid_id": grid_id, "failed": failed})
