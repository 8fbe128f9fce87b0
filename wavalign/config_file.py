"""Reading a config file with `--set key.path=value` overrides, and writing the resolved config."""

from __future__ import annotations

from pathlib import Path

import yaml

from wavalign.atomic import write_text_atomic
from wavalign.config import ConfigError, InvalidConfig, PipelineConfig, load_config, set_dotted


def read_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Parse YAML, apply each 'a.b.c=value' (value parsed as YAML), validate the whole tree."""
    path = Path(path)
    if not path.is_file():
        raise InvalidConfig([f"--config: file {path} not found"])
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InvalidConfig([f"{path}: not valid YAML ({err})"]) from None
    if not isinstance(tree, dict):
        raise InvalidConfig([f"{path}: the top level must be a mapping of sections"])
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise InvalidConfig([f"--set {override!r}: expected key.path=value"])
        try:
            set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
        except ConfigError as err:
            raise InvalidConfig([str(err)]) from None
    return load_config(tree)


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists inline: `interleave_ratio: [2, 8, 3, 8]`."""


_Dumper.add_representer(list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True))


def config_yaml(cfg: PipelineConfig) -> str:
    """The fully resolved config (every default filled in), as YAML in the tree's key order."""
    return yaml.dump(cfg.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def save_config(cfg: PipelineConfig, path: str | Path) -> None:
    write_text_atomic(path, config_yaml(cfg))
