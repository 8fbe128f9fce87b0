"""The paper's ablation in miniature (method §12-13): the same warm-started policy, the same budget,
several seeds, one arm per objective.

    python -m wavalign.ablate [--config pipeline.yaml] [--arms a,b,c,d,e] [--seeds 1,2,3] [--steps 40]
                              [--out runs/ablation-<time>] [--set k=v ...]

Arms (method §12): a full_token_rl (RL on every token, no anchor), b text_rl (RL on text tokens, no
anchor), c text_rl_fixed (text RL + SFT anchor, fixed λ 0.5), d wavalign (text RL + SFT anchor,
adaptive λ), e sft_only. Every run is `launch.py` on one shared local Ray cluster. Writes, in the
output directory: runs/ (each run's full outputs), results.parquet (one row per arm and seed),
results.md (mean ± std over seeds) and curves_*.png (both axes over training, mean over seeds).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ARMS = {
    "a": ("full_token_rl", ["algorithm.rl_token_type=all", "algorithm.adaptive_mixing=false", "algorithm.fixed_rl_weight=1.0"]),
    "b": ("text_rl", ["algorithm.rl_token_type=text", "algorithm.adaptive_mixing=false", "algorithm.fixed_rl_weight=1.0"]),
    "c": ("text_rl_fixed", ["algorithm.rl_token_type=text", "algorithm.adaptive_mixing=false", "algorithm.fixed_rl_weight=0.5"]),
    "d": ("wavalign", ["algorithm.rl_token_type=text", "algorithm.adaptive_mixing=true"]),
    "e": ("sft_only", ["algorithm.adaptive_mixing=false", "algorithm.fixed_rl_weight=0.0"]),
}
# The two axes (method §13): semantics, and acoustics (speech consistent with its own text, speech
# codes distributed like the references').
AXES = ("eval_semantic_accuracy", "eval_acoustic_wer", "eval_speech_js_divergence")


def run_arm(config: str, sets: list[str], arm: str, seed: int, steps: int, out: Path, address: str) -> Path:
    name, overrides = ARMS[arm]
    run_name = f"{name}-s{seed}"
    args = [*sets, *overrides, f"run.seed={seed}", f"run.steps={steps}", f"run.name={run_name}",
            f"run.output_dir={out / 'runs'}", "train.checkpoint_every=0"]
    command = [sys.executable, "launch.py", "--config", config, "--address", address, *(a for s in args for a in ("--set", s))]
    log = out / "logs" / f"{run_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"arm {name} seed {seed} failed (exit {done.returncode}); see {log}")
    (run_dir,) = (out / "runs").glob(f"{run_name}-*")
    return run_dir


def summarise(run_dir: Path, arm: str, seed: int) -> dict:
    import pyarrow.parquet as pq

    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    evaluated = [r for r in rows if r.get(AXES[0]) is not None]
    last = evaluated[-1] if evaluated else {}
    return {
        "arm": ARMS[arm][0], "seed": seed, "run_dir": str(run_dir),
        **{axis: last.get(axis) for axis in AXES},
        "lambda_mean": statistics.mean(r["lambda"] for r in rows),
        "reward_mean_last_quarter": statistics.mean(r["reward_mean"] for r in rows[-max(1, len(rows) // 4):]),
        "grad_norm_text_mean": _mean([r.get("grad_norm_text") for r in rows]),
        "grad_norm_speech_mean": _mean([r.get("grad_norm_speech") for r in rows]),
    }


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None and v == v]
    return statistics.mean(finite) if finite else None


def results_table(results: list[dict]) -> str:
    columns = [*AXES, "lambda_mean", "reward_mean_last_quarter", "grad_norm_text_mean", "grad_norm_speech_mean"]
    lines = ["| arm | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for arm in dict.fromkeys(r["arm"] for r in results):
        mine = [r for r in results if r["arm"] == arm]
        cells = []
        for column in columns:
            values = [r[column] for r in mine if r[column] is not None]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}")
        lines.append(f"| {arm} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(results: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    from wavalign.atomic import atomic_path

    written = []
    for axis in (*AXES, "reward_mean", "lambda"):
        fig, ax = plt.subplots(figsize=(7, 4))
        for arm in dict.fromkeys(r["arm"] for r in results):
            by_step: dict[int, list[float]] = {}
            for r in (r for r in results if r["arm"] == arm):
                for row in pq.read_table(Path(r["run_dir"]) / "metrics.parquet").to_pylist():
                    if row.get(axis) is not None:
                        by_step.setdefault(row["step"], []).append(row[axis])
            if by_step:
                steps = sorted(by_step)
                ax.plot(steps, [statistics.mean(by_step[s]) for s in steps], marker="o", markersize=3, label=arm)
        ax.set_xlabel("step")
        ax.set_ylabel(axis)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        target = out / f"curves_{axis}.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wavalign.ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipeline.yaml")
    parser.add_argument("--arms", default="a,b,c,d,e")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {', '.join(f'{k} ({v[0]})' for k, v in ARMS.items())}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or ROOT / "runs" / f"ablation-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)

    import pyarrow as pa

    import ray

    from wavalign.atomic import write_text_atomic
    from wavalign.pipeline.outputs import write_parquet_atomic

    ray.init(address="local", dashboard_host="127.0.0.1", include_dashboard=False)  # shared by every run
    address = ray.get_runtime_context().gcs_address
    results = []
    try:
        for seed in seeds:
            for arm in arms:
                started = time.monotonic()
                run_dir = run_arm(args.config, args.set, arm, seed, args.steps, out, address)
                results.append(summarise(run_dir, arm, seed))
                print(f"{ARMS[arm][0]} seed {seed}: {time.monotonic() - started:.0f}s; "
                      + ", ".join(f"{k} {results[-1][k]:.3f}" for k in AXES if results[-1][k] is not None), flush=True)
                write_parquet_atomic(out / "results.parquet", pa.Table.from_pylist(results))
    finally:
        ray.shutdown()
    table = results_table(results)
    write_text_atomic(out / "results.md", f"# Ablation: {len(arms)} arms x {len(seeds)} seeds, {args.steps} steps\n\n{table}")
    plot_curves(results, out)
    print(table)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
