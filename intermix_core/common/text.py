"""How messages show what a user wrote: values and texts cut to a readable length."""

from __future__ import annotations

import reprlib
from typing import Any

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 60, 60, 40, 8, 8, 6
_SHORT.maxlevel = 3


def short(value: Any) -> str:
    """repr(value) cut to a few dozen characters: how error messages show values a user wrote."""
    return _SHORT.repr(value)


def duration(seconds: float) -> str:
    """A span of time in the unit a reader takes in at a glance: '45 s', '25 min', '3.2 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def cut(text: str, limit: int = 400) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"
