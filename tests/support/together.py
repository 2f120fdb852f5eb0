"""Starting several calls at the same moment, in threads, and collecting what they raised."""

from __future__ import annotations

import threading
from collections.abc import Callable


def at_once(calls: list[Callable[[], object]]) -> list[BaseException]:
    """Run every call in a thread of its own, all started together; the exceptions they raised (none: [])."""
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as err:  # noqa: BLE001 - reported to the caller
            errors.append(err)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
