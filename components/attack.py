"""Component: FGSM evaluation of one trained fold; the completed result is an Artifact."""

from kfp.dsl import Artifact, Input, Model, Output


def fgsm_attack(
    fold: int,
    grid_id: str,
    tracking_uri: str,
    store_root: str,
    data_uri: str,
    trained: Input[Model],
    result: Output[Artifact],
    device: str = "auto",
):
    """FGSM error per epsilon of a trained fold (intermix_core.run.steps.attack_step); device as in train_fold."""
    from intermix_core.run.steps import attack_step, task_data

    with task_data(data_uri) as data:
        r = attack_step(trained.path, data, fold, result.path, grid_id, tracking_uri or None, store_root or None,
                        device=device)
    print(f"FGSM {r.label}: {r.fgsm}")
    result.metadata.update({"cell": r.label, "grid_id": grid_id, "test_error": r.test_error, "fgsm": r.fgsm})


def fgsm_pack(
    folds: str,
    grid_id: str,
    tracking_uri: str,
    store_root: str,
    data_uri: str,
    trained: Input[Model],
    result: Output[Artifact],
    device: str = "auto",
):
    """FGSM of each trained fold of a pack into result/fold<f> (intermix_core.run.steps.attack_pack_task)."""
    from intermix_core.run.steps import attack_pack_task, task_data

    with task_data(data_uri) as data:
        attack_pack_task(trained.path, data, folds, result.path, grid_id, tracking_uri or None, store_root or None,
                         device=device)
    result.metadata.update({"folds": folds, "grid_id": grid_id})
