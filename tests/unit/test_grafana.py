"""The Grafana dashboard in the repo is driver/grafana.py's output, well formed, and plots step metrics
the pipeline writes (the main job's test checks that each reached the cluster's Prometheus endpoint)."""

import json
from pathlib import Path

from driver.grafana import PREFIX, dashboard, metric_names

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_dashboard_is_the_generated_one():
    committed = json.loads((ROOT / "dashboards" / "wavalign.json").read_text())
    assert committed == dashboard(), "regenerate: python -m driver.grafana > dashboards/wavalign.json"


def test_every_panel_queries_the_run_variable_and_ids_are_unique():
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all('run=~"$run"' in t["expr"] for p in panels for t in p["targets"])
    assert all(name.startswith(PREFIX) for name in metric_names())
