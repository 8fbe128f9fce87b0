"""The Grafana dashboard of a run's `ray_wavalign_*` metrics (what driver/dashboard.py exports through
Ray's metrics), as JSON that Ray's Grafana (or any Grafana on the cluster's Prometheus) imports:
Dashboards -> New -> Import -> dashboards/wavalign.json. A variable picks the run.

    python -m driver.grafana > dashboards/wavalign.json     # regenerate after changing the panels

tests/unit/test_grafana.py checks that the committed file is this module's output, and the main job's
test that every plotted metric reached the cluster's Prometheus endpoint.
"""

from __future__ import annotations

import json

PREFIX = "ray_wavalign_"
# (panel title, unit, step metrics): one time series per metric, per run
PANELS: list[tuple[str, str, list[str]]] = [
    ("Reward", "none", ["reward_mean", "reward_std", "reward_max_mean"]),
    ("λ and its gates", "none", ["lambda", "lambda_raw", "gate_reward", "gate_info", "zero_var_group_frac"]),
    ("Losses", "none", ["loss", "rl_loss", "sft_loss"]),
    ("Entropy per modality", "none", ["text_entropy", "speech_entropy"]),
    ("Gradient norm per modality", "none", ["grad_norm", "grad_norm_text", "grad_norm_speech"]),
    ("KL and clipping", "none", ["kl_text", "kl_speech", "clip_frac"]),
    (
        "Rollout vs learner logprobs (|Δ| per modality, KL)",
        "none",
        [
            "mismatch_text_mean_abs",
            "mismatch_text_max_abs",
            "mismatch_speech_mean_abs",
            "mismatch_speech_max_abs",
            "mismatch_kl",
        ],
    ),
    ("Staleness and policy version", "none", ["staleness", "policy_version"]),
    ("Step time", "s", ["generation_seconds", "reward_wait_seconds", "learn_seconds", "sync_seconds", "step_seconds"]),
    (
        "Weight sync",
        "s",
        ["sync_seconds", "sync_pack_seconds", "sync_transfer_seconds", "sync_load_seconds", "sync_finish_seconds"],
    ),
    ("Rollout throughput", "none", ["rollout_tokens_per_s", "response_tokens"]),
    (
        "vLLM engines: queue and KV cache (per worker)",
        "none",
        ["vllm_requests_running", "vllm_requests_waiting", "vllm_kv_cache_usage"],
    ),
    (
        "vLLM engines: tokens and preemptions (per worker)",
        "none",
        ["vllm_generation_tokens", "vllm_prompt_tokens", "vllm_preemptions"],
    ),
    ("Samples (toy task)", "percentunit", ["rollout_semantic_accuracy", "eval_semantic_accuracy"]),
    ("Workers per pool, learner rebuilds", "none", ["rollout_workers", "reward_workers", "learner_restarts"]),
]
WORKERS = f'{PREFIX}workers{{run=~"$run"}}'  # live workers by pool and state
JUDGE = f'{{__name__=~"{PREFIX}judge_.*", run=~"$run"}}'  # the judge's counters, when a judge scores


def _legend(name: str) -> str:
    """A series' name in its panel: the metric and the run, and for vLLM's per-engine ones the worker."""
    return f"{name} {{{{run}}}}" + (" {{worker}}" if name.startswith("vllm_") else "")


def dashboard() -> dict:
    panels = [
        _panel(i, title, unit, [(f'{PREFIX}{name}{{run=~"$run"}}', _legend(name)) for name in names])
        for i, (title, unit, names) in enumerate(PANELS)
    ]
    panels.append(_panel(len(panels), "Worker states", "none", [(WORKERS, "{{pool}} {{state}}")]))
    panels.append(_panel(len(panels), "Judge counters", "none", [(JUDGE, "{{__name__}}")]))
    return {
        "title": "wavalign-ray",
        "uid": "wavalign-ray",
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {
                    "name": "run",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": f"label_values({PREFIX}reward_mean, run)",
                    "includeAll": True,
                    "multi": True,
                },
            ]
        },
        "panels": panels,
    }


def metric_names() -> list[str]:
    """Every metric the dashboard plots by name (the judge's counters go by a pattern)."""
    return [f"{PREFIX}{name}" for _, _, names in PANELS for name in names] + [f"{PREFIX}workers"]


def _panel(index: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


if __name__ == "__main__":
    print(json.dumps(dashboard(), indent=2, ensure_ascii=False))
