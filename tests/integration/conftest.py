"""Integration fixtures: one Ray cluster for the whole session, its address and ports (the embedded
default config and its toy assets come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wavalign.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


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
def address(ray_cluster) -> str:
    """The session cluster's GCS address, for the driver processes the tests start."""
    return ray_cluster.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def dist_port() -> int:
    """One free port for the session's torch.distributed (gloo) group: it is set up once per process."""
    return free_port()
