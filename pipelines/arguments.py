"""What every `intermix` subcommand shares, light enough for all of them: the usage error, the grid a command line
names, `--set KEY=VALUE` and `KEY=VALUE` flags.

It imports the configuration (pydantic) and nothing heavier: no torch, MLflow, boto3 or kfp, so that `show`,
`config` and `estimate` answer at once (tests/e2e/test_cli_imports.py).
"""

import argparse
import re
from typing import Any

from intermix_core.common.text import cut, short
from intermix_core.common.yamlfile import parse_yaml
from intermix_core.config import ConfigError
from intermix_core.config.grid import GridSpec, load_grid


class UsageError(Exception):
    """A mistake in the command line that argparse cannot see (e.g. a value that fits no grid cell)."""


# what `intermix` prints as one line and exits 2 for: the user can fix it. ValueError: what the core raises for
# inputs that do not fit (e.g. a fold the prepared data lacks); OSError: the machine refused (a full disk, a
# missing or unwritable folder), named by the message. Each command module adds its own (data, store errors).
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, UsageError, OSError, ValueError)
# one line and exit 1: a service stayed unreachable (none is used by the light commands)
SERVICE_ERRORS: tuple[type[BaseException], ...] = ()
# one line and exit 128 + the signal: a fold stopped by SIGINT or SIGTERM (no light command trains)
SIGNALLED: tuple[type[BaseException], ...] = ()

GRID_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}-[0-9a-f]{10}$")  # config.grid.grid_id: <name>-<10 hex digits>


def grid_name(args: argparse.Namespace) -> str:
    """The one grid the command line names (GRID, --grid or --grid-id), default demo; two different ones are an error."""
    given = {flag: v for flag, v in (("GRID", getattr(args, "grid_pos", None)), ("--grid", getattr(args, "grid", None)),
                                     ("--grid-id", getattr(args, "grid_id", None))) if v}
    if len(set(given.values())) > 1:
        raise UsageError("two grids given: " + " and ".join(f"{k} {v}" for k, v in given.items()))
    return next(iter(given.values()), "demo")


def with_on_silent(grid: GridSpec, args: argparse.Namespace) -> GridSpec:
    """The grid with --on-silent applied, when given."""
    if getattr(args, "on_silent", None):
        return grid.model_copy(update={"on_silent": args.on_silent})
    return grid


def pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    """['a=b', ...] -> {'a': 'b'}; the error names the flag."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"{flag} {short(item)}: expected KEY=VALUE")
        out[key] = value
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise UsageError(f"--set {cut(dotted, 80)}: expected KEY or SECTION.KEY, e.g. optim.epochs")
    for depth, k in enumerate(keys[:-1]):
        if depth == 0 and k == "strategy" and isinstance(data.get(k), str):
            data[k] = {"name": data[k]}  # a preset by name (--strategy, or the file): strategy.KEY overrides its fields
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise UsageError(f"--set {cut(dotted, 80)}: {'.'.join(keys[:depth + 1])} is {short(data)}, not a section")
    data[keys[-1]] = value


def apply_sets(data: dict[str, Any], items: list[str] | None) -> dict[str, Any]:
    """`data` (a config mapping) with each `--set KEY=VALUE` applied in place; VALUE is read as YAML."""
    for dotted, text in pairs(items, "--set").items():
        _set_dotted(data, dotted, parse_yaml(text, f"--set {cut(dotted, 80)}"))
    return data


def load_grid_args(args: argparse.Namespace) -> GridSpec:
    """The grid named on the command line (a file or a packaged grid), with --set on top of every cell's config."""
    sets = apply_sets({}, getattr(args, "set", None))
    return with_on_silent(load_grid(grid_name(args), name=getattr(args, "name", None), overrides=sets), args)
