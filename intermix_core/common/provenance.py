"""Where a result comes from: the code's commit and the machine, as short plain text for results and reports."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The code's commit: $INTERMIX_GIT_COMMIT (set in images), else `git rev-parse HEAD` beside this file."""
    if os.environ.get("INTERMIX_GIT_COMMIT"):
        return os.environ["INTERMIX_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else the architecture, e.g. 'AMD EPYC 7B13'."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()[:80]
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """The machine without naming it (no host name): 'AMD EPYC 7B13, 2 cores, Linux x86_64'."""
    return f"{cpu_model()}, {os.cpu_count() or '?'} cores, {platform.system()} {platform.machine()}"
