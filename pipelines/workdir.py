"""The local work directory of `intermix run`, `rerun` and `status`: where its store and MLflow are by default.

Light (no kfp, MLflow or torch), so that `intermix status` finds the store without loading the local runner.
"""

from dataclasses import dataclass
from pathlib import Path

from intermix_core.common.redact import redact_uris

DEFAULT_WORKDIR = "intermix-work"  # relative to where the command runs; INTERMIX_WORKDIR or --workdir change it


@dataclass(frozen=True)
class Workdir:
    """A local work directory, and the store and MLflow it uses (by default inside it)."""

    root: Path
    store_uri: str | None = None  # a folder or s3:// root; None: <root>/store
    tracking: str | None = None  # an MLflow tracking URI; None: sqlite <root>/mlflow.db

    def arguments(self) -> list[str]:
        """The options that name this work directory, its store and MLflow to another `intermix` command
        (none for the defaults; the tracking URI without its credentials)."""
        words = [] if self.root == Path(DEFAULT_WORKDIR) else ["--workdir", str(self.root)]
        if self.store_uri:
            words += ["--store", self.store_uri]
        if self.tracking:
            words += ["--tracking-uri", redact_uris(self.tracking)]
        return words

    @property
    def store(self) -> str:
        """The grid store root: the given one, else <root>/store (absolute)."""
        return self.store_uri or str((self.root / "store").resolve())

    @property
    def local_tracking(self) -> bool:
        """True when tracking goes to the work directory's own sqlite store."""
        return self.tracking is None

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI: the given one, else the work directory's sqlite store."""
        return self.tracking or f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    @property
    def kfp_root(self) -> Path:
        """KFP's local pipeline root."""
        return self.root / "kfp"

    @property
    def logs(self) -> Path:
        """Task logs of local runs."""
        return self.root / "logs"

    def reports(self, grid_id: str) -> Path:
        """The one folder of a grid's report here, <root>/reports/<grid id>: `run`, `rerun` and `results` write it."""
        return self.root / "reports" / grid_id
