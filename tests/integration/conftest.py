"""Integration fixtures: the embedded default config, its toy assets (built once, cached in
.assets/toy), and one Ray cluster for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from wavalign.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cfg():
    from wavalign.config_file import read_config

    return read_config(ROOT / "pipeline.yaml", [f"toy.assets_dir={ROOT / '.assets' / 'toy'}"])


@pytest.fixture(scope="session")
def toy_assets(cfg):
    from wavalign.toy.assets import ensure_toy_assets

    return ensure_toy_assets(cfg.toy, cfg.model.layout)


@pytest.fixture(scope="session")
def metrics_port() -> int:
    """Where the session cluster's Prometheus endpoint listens (ray.util.metrics)."""
    return free_port()


@pytest.fixture(scope="session")
def ray_cluster(metrics_port):
    import ray

    ray.init(address="local", num_cpus=2, dashboard_host="127.0.0.1", include_dashboard=False, _metrics_export_port=metrics_port)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def dist_port() -> int:
    """One free port for the session's torch.distributed (gloo) group: it is set up once per process."""
    return free_port()
