"""The task processes of `intermix run` go with it: killed with SIGKILL (nothing of it can run), its fold trainers
stop as if sent SIGTERM, and their output, a pipe to the gone runner, no longer fails them (BrokenPipeError).

Real processes: a runner that starts its task through a shell, as KFP's local runner does, and a task that
calls the train step's watchdog (`stop_with_parent`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from intermix_core.run.steps import PARENT_ENV

_RUNNER = """
import os, shlex, subprocess, sys
os.environ[PARENT_ENV] = str(os.getpid())
command = " ".join(shlex.quote(w) for w in (sys.executable, "-c", sys.argv[1], sys.argv[2]))
task = subprocess.Popen(["sh", "-c", f"{command}; echo after"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
print(task.stdout.readline().strip(), flush=True)  # the task's "ready"
task.wait()
"""

_TASK = """
import signal, sys, time
from intermix_core.run.steps import stop_with_parent

def stopped(signum, frame):
    print("stopping: one more line to the gone runner", flush=True)
    print("and one to stderr", file=sys.stderr, flush=True)
    open(sys.argv[1], "w").write(signal.Signals(signum).name)
    sys.exit(143)

signal.signal(signal.SIGTERM, stopped)
stop_with_parent(every=0.2)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def test_a_task_stops_when_the_runner_is_killed(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    runner = subprocess.Popen([sys.executable, "-c", _RUNNER.replace("PARENT_ENV", repr(PARENT_ENV)), _TASK,
                               str(marker)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert runner.stdout.readline().strip() == "ready"
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(10)
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        runner.kill()
    assert marker.exists() and marker.read_text() == "SIGTERM"  # the task's handler ran, its prints did not fail it
