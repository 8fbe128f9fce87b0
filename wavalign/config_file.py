"""Reading a config file with `--set key.path=value` overrides, and writing the resolved config.

Every way a file or an override can be wrong is one line of InvalidConfig naming the file (and
line) or the override: a missing, unreadable, non-UTF-8 or empty file, YAML that does not parse, a
key given twice in one mapping (YAML would keep the last one silently), a top level that is not a
mapping. Numbers are read as YAML 1.2 does (`1e-6` is a float, not the string PyYAML 1.1 makes of
it), so a strict config can take the values people write.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from wavalign.atomic import write_text_atomic
from wavalign.config import ConfigError, InvalidConfig, PipelineConfig, load_config, set_dotted


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads YAML 1.2 floats (1e-6, 1E+3, .5)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_FLOAT_1_2 = re.compile(
    r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
)
# Tried after SafeLoader's own resolvers, so integers stay integers and only what YAML 1.1 left a
# string (1e-6) becomes a float.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Parse YAML, apply each 'a.b.c=value' (value parsed as YAML), validate the whole tree."""
    tree = read_tree(Path(path))
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise InvalidConfig([f"--set {override!r}: expected key.path=value"])
        try:
            value = parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise InvalidConfig([f"--set {override!r}: the value is not valid YAML ({_first_line(err)})"]) from None
        try:
            set_dotted(tree, key.strip(), value)
        except ConfigError as err:
            raise InvalidConfig([f"--set {override!r}: {err}"]) from None
    return load_config(tree)


def read_tree(path: Path) -> dict[str, Any]:
    """The file's mapping of sections, or InvalidConfig saying in one line what is wrong with it."""
    if not path.exists():
        raise InvalidConfig([f"--config: file {path} not found"])
    if not path.is_file():
        raise InvalidConfig([f"--config: {path} is not a file"])
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise InvalidConfig([f"--config: cannot read {path} ({err.strerror})"]) from None
    except UnicodeDecodeError as err:
        raise InvalidConfig(
            [f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"]
        ) from None
    try:
        tree = parse_yaml(text)
    except yaml.YAMLError as err:
        raise InvalidConfig([f"{path}: not valid YAML ({_first_line(err)})"]) from None
    if tree is None:
        raise InvalidConfig([f"{path}: the file is empty; a config names at least one section (see pipeline.yaml)"])
    if not isinstance(tree, dict):
        raise InvalidConfig([f"{path}: the top level must be a mapping of sections, got a {type(tree).__name__}"])
    return tree


def _first_line(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what, and where (line and column, 1-based)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists inline: `interleave_ratio: [2, 8, 3, 8]`."""


_Dumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)


def config_yaml(cfg: PipelineConfig) -> str:
    """The fully resolved config (every default filled in), as YAML in the tree's key order."""
    return yaml.dump(cfg.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def save_config(cfg: PipelineConfig, path: str | Path) -> None:
    write_text_atomic(path, config_yaml(cfg))
