"""Component: the gate of a run whose GPU tasks wait for the run before it in its lane (pipelines/gpu_budget.py)."""


def lane_gate(store_root: str, after: str, max_wait_s: int):
    """Wait until `after` (the marker the previous run of the lane writes when it ends) is in the store, at most
    max_wait_s (intermix_core.run.steps.lane_wait_step); '' waits for nothing."""
    from intermix_core.run.steps import lane_wait_step

    lane_wait_step(store_root, after, max_wait_s)
