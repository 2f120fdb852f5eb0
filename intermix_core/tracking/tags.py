"""The names intermix gives things in MLflow: run tags, metric names, the experiment's kind.

Every reader and writer of these runs (the fold tracker, the summary run, the CLI, tests) takes the
names from here. docs/tracking.md describes what each tag means.
"""

T = "intermix."
GRID, DATASET, SETUP, STRATEGY, FOLD, KIND = (
    T + k for k in ("grid_id", "dataset", "setup", "strategy", "fold", "kind")
)
SUPERSEDED, SUPERSEDED_BY, ERROR = T + "superseded", T + "superseded_by", T + "error"
# when this attempt at the fold began (ms since the epoch; set at creation and again on reopening):
# an attempt supersedes only attempts that began before it
ATTEMPT_STARTED = T + "attempt_started"
# a random id of the process attempt that holds the run; another attempt that reopens the run (a KFP
# retry resuming from the stored checkpoint while the first pod is still dying) replaces it
ATTEMPT = T + "attempt"
# when the attempt holding a fold run last showed it was alive (ms since the epoch): set when it starts, at every
# checkpoint and every HEARTBEAT_EVERY seconds in the background. A RUNNING run without one for STALE_AFTER seconds
# belongs to an attempt that was killed (SIGKILL, a lost node): nothing could end its run
HEARTBEAT = T + "heartbeat"
HEARTBEAT_EVERY = 60.0
LAST_EPOCH = T + "epoch"  # the last epoch whose metrics reached MLflow, refreshed with the heartbeat
STALE_AFTER = 15 * 60.0
PARENT_ID = "mlflow.parentRunId"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI opens on runs, not GenAI
FGSM_PREFIX = "fgsm_error_eps_"  # 10-crop clip error under FGSM
FGSM_CROP_PREFIX = "fgsm_crop_error_eps_"  # single-crop error under FGSM
EPOCH_METRICS = ("train_loss", "train_error", "val_error", "lr")
TAG_MAX = 5000  # characters MLflow keeps of a tag value
SUMMARY_KIND = "summary"  # KIND of the grid's summary run
SUMMARY_VERSION = T + "summary_version"  # the report version the summary run's tables are
SUMMARY_REVISION = T + "summary_revision"  # how many times the summary run was updated (its metrics' step)
