"""Component: FGSM evaluation of one trained fold (GPU); the completed result is an Artifact."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.image import IMAGE_GPU


@dsl.component(base_image=IMAGE_GPU, install_kfp_package=False)
def fgsm_attack(
    fold: int,
    grid_id: str,
    tracking_uri: str,
    store_root: str,
    data: Input[Dataset],
    trained: Input[Model],
    result: Output[Artifact],
):
    """FGSM error per epsilon of a trained fold (intermix_core.steps.attack_step)."""
    from intermix_core.steps import attack_step

    r = attack_step(trained.path, data.path, fold, result.path, grid_id, tracking_uri or None, store_root or None)
    cell = f"{r.dataset}/{r.setup}/{r.strategy}/fold{fold}"
    print(f"FGSM {cell}: {r.fgsm}")
    result.metadata.update({"cell": cell, "grid_id": grid_id, "test_error": r.test_error, "fgsm": r.fgsm})
