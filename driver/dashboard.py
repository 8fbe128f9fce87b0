"""Step metrics and worker states on the Ray dashboard (ray.util.metrics -> the cluster's
Prometheus endpoint and the dashboard's metrics view), tagged with the run name."""

from __future__ import annotations

import re

from driver.step_metrics import finite_numbers


class DashboardMetrics:
    def __init__(self, run_name: str) -> None:
        from ray.util import metrics

        self._metrics, self.run = metrics, run_name
        self._gauges: dict[str, object] = {}
        self._workers = metrics.Gauge(
            "wavalign_workers", "live workers by pool and state", tag_keys=("run", "pool", "state")
        )

    def _gauge(self, key: str):
        if key not in self._gauges:
            name = "wavalign_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)
            self._gauges[key] = self._metrics.Gauge(name, f"wavalign step metric {key}", tag_keys=("run",))
        return self._gauges[key]

    def report_step(self, metrics: dict) -> None:
        for key, value in finite_numbers(metrics).items():
            self._gauge(key).set(value, tags={"run": self.run})

    def report_workers(self, pools: dict[str, dict[str, str]]) -> None:
        """pools: pool name -> {worker name: state}."""
        for pool, states in pools.items():
            for state in ("starting", "idle", "busy"):
                count = sum(1 for s in states.values() if s == state)
                self._workers.set(count, tags={"run": self.run, "pool": pool, "state": state})
