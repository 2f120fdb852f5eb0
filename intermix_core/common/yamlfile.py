"""YAML a user hands us (configs, grids, cluster options, --set values): parsed safely and within bounds.

Every problem is a ConfigError naming the file (or flag) and what was wrong, in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from intermix_core.common.text import cut


class ConfigError(ValueError):
    """A configuration file or value a user wrote is invalid; the message says where and why."""


# Limits on YAML a user hands us (configs, grids, cluster options, --set values). Anchors and aliases
# are allowed (handy in grids), but the document they expand to is bounded: a "billion laughs" file of
# a few hundred bytes would otherwise expand to billions of values in memory.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 32


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely and boundedly, raising ConfigError naming `source` on any problem."""
    try:  # the reader refuses control characters and unpaired surrogates (a non-UTF-8 byte in argv) at once
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({_reader_problem(err)})") from None
    loader.name = source  # marks in PyYAML's messages name the file, not "<unicode string>"
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_size(node, source)
        return loader.construct_document(node)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply (more than {MAX_YAML_DEPTH} levels)") from None
    except (yaml.YAMLError, ValueError, TypeError) as err:  # ValueError/TypeError: e.g. a bad date, a 5000-digit int
        raise ConfigError(f"{source}: not valid YAML ({cut(' '.join(str(err).split()), 300)})") from None
    finally:
        loader.dispose()


def _reader_problem(err: yaml.YAMLError) -> str:
    """What PyYAML's reader refused, as a few words: the character and where (its message quotes the whole text)."""
    if isinstance(err, yaml.reader.ReaderError):
        char = err.character if isinstance(err.character, str) else chr(err.character)
        what = f"U+{ord(char):04X}" if char.isprintable() else repr(char)
        kind = "a byte that is not UTF-8" if 0xDC80 <= ord(char) <= 0xDCFF else "a control character"
        return f"{kind}, {what}, at position {err.position}; YAML allows printable text only"
    return cut(" ".join(str(err).split()), 300)


def _check_yaml_size(root: yaml.Node, source: str) -> None:
    """Refuse a document deeper than MAX_YAML_DEPTH or larger than MAX_YAML_NODES once aliases are expanded."""
    sizes: dict[int, int] = {}  # expanded size per node: an alias is the same node object as its anchor

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{source}: YAML nested too deeply (more than {MAX_YAML_DEPTH} levels)")
        if id(node) in sizes:
            if sizes[id(node)] < 0:
                raise ConfigError(f"{source}: a YAML alias refers to a node that contains it (recursive alias)")
            return sizes[id(node)]
        sizes[id(node)] = -1  # in progress
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            _check_unique_keys(node, source)
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        else:
            total = 1
        if total > MAX_YAML_NODES:
            raise ConfigError(f"{source}: YAML too large: more than {MAX_YAML_NODES} values once anchors and aliases "
                              "are expanded (a config or grid has a few hundred)")
        sizes[id(node)] = total
        return total

    size(root, 0)


_MERGE = "tag:yaml.org,2002:merge"


def _check_unique_keys(node: yaml.MappingNode, source: str) -> None:
    """Refuse a key written twice in one mapping (PyYAML silently keeps the last: `name:` twice, two `overrides:`)."""
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
            continue  # a merge (<<: *anchor) may be overridden by the mapping's own keys: that is what it is for
        if (key.tag, key.value) in seen:
            raise ConfigError(f"{source}: line {key.start_mark.line + 1}: key {cut(repr(key.value), 60)} appears twice "
                              "in one mapping (YAML would keep only the last); keep one")
        seen.add((key.tag, key.value))


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file (UTF-8, at most 1 MiB, bounded alias expansion), raising ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{p}: cannot be read ({err.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_YAML_BYTES // (1 << 20)} MiB; a config, grid or options file "
                          "is a few KiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                          "save it as UTF-8") from None
    return parse_yaml(text, str(p)) or {}


def dump_yaml(data: Any) -> str:
    """Data as block-style YAML in its own key order (how `intermix config` prints a resolved configuration)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
