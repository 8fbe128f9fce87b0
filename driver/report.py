"""Render a run's curves to PNG: `python -m driver.report RUN_DIR [--out DIR]`.

Panels (one PNG each, in RUN_DIR/report/ unless --out): rewards, λ and its gates, losses,
per-modality entropy, per-modality gradient norms, and the toy task's semantic accuracy and
acoustic measures on each step's samples and on the eval split. Metrics a run did not record are
left out.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

PANELS = {
    "rewards": ("reward", ["reward_mean", "reward_max_mean", "reward_std"]),
    "lambda": ("λ and gates", ["lambda", "lambda_raw", "gate_reward", "gate_info", "zero_var_group_frac"]),
    "losses": ("loss", ["loss", "rl_loss", "sft_loss"]),
    "entropy": ("entropy (nats)", ["text_entropy", "speech_entropy"]),
    "grad_norms": ("gradient norm", ["grad_norm", "grad_norm_text", "grad_norm_speech"]),
    "samples": (
        "the step's samples",
        ["rollout_semantic_accuracy", "rollout_acoustic_wer", "rollout_speech_js_divergence"],
    ),
    "evaluation": (
        "evaluation",
        ["eval_semantic_accuracy", "eval_acoustic_wer", "eval_speech_js_divergence", "eval_well_formed_frac"],
    ),
}


def line_chart(series: dict[str, list[tuple[float, float]]], ylabel: str, title: str, target: Path) -> Path:
    """One PNG of labelled (step, value) curves, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wavalign.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return target


def finite_points(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of the rows that recorded a finite `key`."""
    return [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def render(run_dir: Path, out_dir: Path) -> list[Path]:
    from driver.outputs import read_parquet

    metrics = run_dir / "metrics.parquet"
    if not metrics.exists():
        raise FileNotFoundError(f"{metrics} does not exist: is {run_dir} a run directory with at least one step?")
    rows = read_parquet(metrics).to_pylist()  # the run may be going on
    written = []
    for name, (ylabel, keys) in PANELS.items():
        series = {key: points for key in keys if (points := finite_points(rows, key))}
        if series:
            written.append(line_chart(series, ylabel, f"{run_dir.name}: {name}", out_dir / f"{name}.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m driver.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/report")
    args = parser.parse_args(argv)
    try:
        written = render(args.run_dir, args.out or args.run_dir / "report")
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
