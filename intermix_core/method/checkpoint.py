"""A fold folder's files: the checkpoint (written whole or not at all, read as data only) and the folder lock.

`save_checkpoint` writes through a private temporary file and a rename; `load_checkpoint` reads with
`torch.load(weights_only=True)`, so a crafted file is refused, never executed. `fold_lock` keeps a
second trainer out of a folder that one is training into.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from intermix_core.config import ExperimentConfig
from intermix_core.models import StagedModel, create_model

CHECKPOINT_FORMAT = 2
LOCK = ".fold.lock"


class FoldBusy(ValueError):
    """Another process is training into the same fold folder; the message says who."""


def _temporary(path: Path) -> Path:
    """A temporary name beside `path`, unique to this process and call (concurrent writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


_TEMPORARY = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp$")  # the names _temporary and records.write_json_atomic give


def clean_temporaries(folder: Path) -> list[str]:
    """Remove the temporary files a process killed mid-write left in a fold folder (call it holding the fold lock)."""
    removed = []
    for path in folder.iterdir():
        if path.is_file() and _TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def interruption(err: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (a signal) behind `err`, if one is in its chain (torch turns one into a RuntimeError)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save through a private temporary file and rename: a checkpoint is whole or absent, never half-written.

    A failed write (a full disk, a quota) removes the temporary file and raises OSError naming the
    checkpoint and the system's reason; the previous checkpoint, if any, is left as it was.
    """
    tmp = _temporary(path)
    try:
        with tmp.open("wb") as f:  # a Python file: torch's writer then surfaces the OSError (errno) it hit
            torch.save(state, f)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        stopped = interruption(err)
        if stopped is not None:  # a Ctrl-C while torch wrote: its writer reports it as a RuntimeError
            raise stopped from None
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        reason = cause.strerror or str(cause)
        raise OSError(cause.errno, f"{path}: cannot save the checkpoint ({reason}; is the disk full?)") from None
    finally:
        tmp.unlink(missing_ok=True)


_REQUIRED = {"format": int, "config": dict, "fold": int, "epoch": int, "model": dict, "history": list}


def checkpoint_digest(path: str | Path) -> str:
    """Hex SHA-256 of a checkpoint file (what the store's completion marker of it records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, as tensors and plain values only: it never runs code.

    `torch.load(weights_only=True)` refuses any pickled object other than tensors, containers and
    plain scalars, so a crafted file is refused instead of executed; missing or mistyped keys are
    refused too. Every refusal is a ValueError naming the file. `mmap` maps the tensors instead of
    reading them (to look at the epoch of a large checkpoint).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except Exception as err:  # noqa: BLE001 - unpickling refusals and damaged files alike
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a loadable intermix checkpoint, refused ({reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not an intermix checkpoint (expected a mapping, got {type(state).__name__})")
    missing = [k for k in _REQUIRED if k not in state]
    wrong = [k for k, t in _REQUIRED.items() if k in state and not isinstance(state[k], t)]
    if missing or wrong:
        detail = [f"missing {', '.join(missing)}"] if missing else []
        detail += [f"wrong type for {', '.join(wrong)}"] if wrong else []
        raise ValueError(f"{path}: not an intermix checkpoint ({'; '.join(detail)})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {state['format']}, expected {CHECKPOINT_FORMAT}")
    return state


class DataMismatch(ValueError):
    """A fold's checkpoint was trained on other prepared data than the data given; the message says how to go on."""


def check_same_data(state: dict[str, Any] | None, data_fingerprint: str, where: str | Path,
                    data_dir: str | Path) -> None:
    """Refuse a checkpoint trained on other prepared data (other clips or labels): resuming or attacking it mixes."""
    had = state.get("data_fingerprint") if state is not None else None
    if had is not None and had != data_fingerprint:
        raise DataMismatch(f"{where}: trained on other prepared data (fingerprint {had}) than {data_dir} holds "
                           f"({data_fingerprint}); its results would mix two datasets: train it again on this data "
                           "(--from-scratch, or another out folder or grid id), or give the data it was trained on")


def model_from_checkpoint(state: dict[str, Any]) -> tuple[StagedModel, ExperimentConfig]:
    """Rebuild the trained model (eval mode, CPU) and its resolved config from a checkpoint."""
    cfg = ExperimentConfig.model_validate(state["config"])
    model = create_model(cfg.model, cfg.num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"checkpoint weights do not fit {cfg.model}: {str(err).splitlines()[0]}") from None
    return model.eval(), cfg


_HELD: set[Path] = set()  # fold folders this process holds the lock of (a nested fold_lock is a no-op)


@contextlib.contextmanager
def fold_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on a fold folder while training into it; a second trainer gets FoldBusy naming the holder.

    Re-entrant within a process (the train step takes it before it touches the folder or the store,
    and the training inside takes it again). The lock file is opened without following a symbolic
    link (O_NOFOLLOW) and must be a regular file of the fold folder: a `.fold.lock` linked to
    another file is refused, never truncated.
    """
    key = out.resolve()
    if key in _HELD:
        yield
        return
    path = out / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if path.is_symlink():
            raise FoldBusy(f"{path}: a symbolic link, not the fold's lock file; remove it (nothing is written "
                           "through it)") from None
        raise
    with os.fdopen(fd, "r+") as f:
        if not os.path.samestat(os.fstat(fd), os.lstat(path)) or not os.path.isfile(path):
            raise FoldBusy(f"{path}: not a regular file of the fold folder; remove it")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read(200).strip() or "another process"
            raise FoldBusy(f"{out}: fold folder in use by {holder}; wait for it to finish or train into another folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
