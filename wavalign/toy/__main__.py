"""Build the toy assets (tiny model + data) for a config: `python -m wavalign.toy --config pipeline.yaml`."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from wavalign.config import InvalidConfig
from wavalign.config_file import read_config
from wavalign.toy.assets import ensure_toy_assets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="pipeline.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is current")
    args = parser.parse_args(argv)
    try:
        cfg = read_config(args.config, args.set)
    except InvalidConfig as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # SIGTERM (ray job stop, an interrupted test session) unwinds the build, which then removes its
    # half-built staging folder, instead of killing it where it stands.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    assets = ensure_toy_assets(cfg.toy, cfg.model.layout, force=args.force)
    print(json.dumps(assets.report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
