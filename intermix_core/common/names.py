"""Names and values that become store keys, MLflow names, KFP names and pipeline parameters: checked in one place.

A name (a grid id, a setup, a strategy, a grid name) is lower-case letters, digits, '_' and '-',
starting with a letter or digit, at most 64 characters: it is safe as an S3 key part, a path component,
an MLflow tag value in a search filter, a Kubernetes label value and a KFP run name. A value that
reaches a compiled pipeline (a data source, a store root, a tracking URI) holds no control character
(a newline breaks the compiled YAML) and no '{{' (KFP's runner substitutes placeholders in it).
"""

from __future__ import annotations

import re

from intermix_core.common.text import short

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
NAME_RULE = "lower-case letters, digits, '_' and '-', starting with a letter or digit, at most 64 characters"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: object, what: str) -> str:
    """`value` if it is a valid name; else ValueError naming `what`, the value and the rule."""
    if not isinstance(value, str) or not NAME.match(value):
        raise ValueError(f"{what} {short(value)} is not a valid name: expected {NAME_RULE}")
    return value


def check_pipeline_value(value: object, what: str) -> str:
    """`value` if it may reach a compiled pipeline as a parameter; else ValueError naming `what` and why."""
    if not isinstance(value, str):
        raise ValueError(f"{what} {short(value)}: expected text")
    if _CONTROL.search(value):
        raise ValueError(f"{what} {short(value)}: control characters (a newline, a tab, ...) are not allowed")
    if "{{" in value:
        raise ValueError(f"{what} {short(value)}: '{{{{' is not allowed (Kubeflow would read it as a placeholder)")
    return value


def check_pipeline_args(args: dict[str, object]) -> None:
    """Every text argument of a pipeline run passes check_pipeline_value (its parameter named in the error)."""
    for name, value in args.items():
        if isinstance(value, str):
            check_pipeline_value(value, name)


def version_order(version: str) -> tuple[int, str]:
    """How report versions sort (store pointers, the MLflow summary run): by their sequence number, then name.

    A version is `<8-digit sequence>-<UTC time>-<random>` (intermix_core.store.reports); one from
    before the sequence counts as 0. No writer's clock decides which is newer.
    """
    head = version.split("-", 1)[0]
    return (int(head), version) if head.isdigit() and len(head) == 8 else (0, version)
