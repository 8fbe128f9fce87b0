"""The paper's ablation in miniature (method §12-13): the same warm-started policy, the same budget,
several seeds, one arm per objective.

    python -m driver.ablate [--config pipeline.yaml] [--task hard|default] [--arms a,b,c,d,e]
                              [--seeds 1,2,3] [--steps 30] [--out runs/ablation-<time>] [--set k=v ...]
                              [--address GCS_ADDRESS]

Arms (method §12): a full_token_rl (RL on every token, no anchor), b text_rl (RL on text tokens, no
anchor), c text_rl_fixed (text RL + SFT anchor, fixed λ 0.5), d wavalign (text RL + SFT anchor,
adaptive λ), e sft_only. Every run is `launch.py` on one shared local Ray cluster, with the task
settings of `--task` and then `--set` applied on top of the config.

Writes, in the output directory: runs/ (each run's full outputs), logs/, results.parquet (one row
per arm and seed), results.md (mean ± std over seeds, and the warm start) and curves_*.png (both
axes over training, mean over seeds, smoothed).
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
    "a": (
        "full_token_rl",
        ["algorithm.rl_token_type=all", "algorithm.adaptive_mixing=false", "algorithm.fixed_rl_weight=1.0"],
    ),
    "b": (
        "text_rl",
        ["algorithm.rl_token_type=text", "algorithm.adaptive_mixing=false", "algorithm.fixed_rl_weight=1.0"],
    ),
    "c": (
        "text_rl_fixed",
        ["algorithm.rl_token_type=text", "algorithm.adaptive_mixing=false", "algorithm.fixed_rl_weight=0.5"],
    ),
    "d": ("wavalign", ["algorithm.rl_token_type=text", "algorithm.adaptive_mixing=true"]),
    "e": ("sft_only", ["algorithm.adaptive_mixing=false", "algorithm.fixed_rl_weight=0.0"]),
}
# The harder task of issue 7: longer pronunciations (speech tokens outnumber text tokens ~6:1, as
# in real spoken dialogue models), imperfect SFT references (the anchor states a wrong result for
# some questions, so SFT alone cannot solve the task), a noisy judge that reads the text channel
# only, and per-modality gradient norms every 5 steps for the analysis. Its own asset cache: the
# model is warm-started on it.
TASKS = {
    "hard": [
        "toy.assets_dir=.assets/toy-ablation",
        "toy.min_word_tokens=4",
        "toy.max_word_tokens=8",
        "toy.noisy_sft_references=true",
        "reward.toy_noise_std=0.5",
        "reward.toy_flip_prob=0.1",
        "rollout.max_new_tokens=128",
        "learner.grad_norm_every=5",
    ],
    "default": [],  # pipeline.yaml's toy task as it is (quick checks)
}
# The two axes (method §13), on each step's own samples (training prompts, the clean answer check
# rather than the noisy reward) and on the held-out eval split: semantics, and acoustics (speech
# consistent with its own text; speech codes distributed like the references').
STEP_AXES = ("rollout_semantic_accuracy", "rollout_acoustic_wer", "rollout_speech_js_divergence")
EVAL_AXES = ("eval_semantic_accuracy", "eval_acoustic_wer", "eval_speech_js_divergence")
START_AXES = ("eval_start_semantic_accuracy", "eval_start_acoustic_wer")  # the eval split before step 1
COLUMNS = (
    *STEP_AXES,
    *EVAL_AXES,
    "eval_gain",
    "lambda_mean",
    "reward_mean",
    "grad_norm_text",
    "grad_norm_speech",
)
# The paper's comparisons, per seed (the same warm start, the same seed: the differences are paired).
PAIRS = (("d", "c"), ("d", "e"), ("d", "b"), ("a", "b"))
PAIRED_AXES = ("eval_semantic_accuracy", "eval_acoustic_wer", "rollout_semantic_accuracy", "rollout_acoustic_wer")
CURVES = (*STEP_AXES, "reward_mean", "lambda", "grad_norm_text", "grad_norm_speech", "speech_entropy")


def run_arm(config: str, sets: list[str], arm: str, seed: int, steps: int, out: Path, address: str) -> Path:
    name, overrides = ARMS[arm]
    run_name = f"{name}-s{seed}"
    args = [
        *sets,
        *overrides,
        f"run.seed={seed}",
        f"run.steps={steps}",
        f"run.name={run_name}",
        f"run.output_dir={out / 'runs'}",
        "train.checkpoint_every=0",
    ]
    command = [
        sys.executable,
        "launch.py",
        "--config",
        config,
        "--address",
        address,
        *(a for s in args for a in ("--set", s)),
    ]
    log = out / "logs" / f"{run_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"arm {name} seed {seed} failed (exit {done.returncode}); see {log}")
    (run_dir,) = (out / "runs").glob(f"{run_name}-*")
    return run_dir


def _mean(values) -> float | None:
    finite = [v for v in values if v is not None and v == v]
    return statistics.mean(finite) if finite else None


def summarise(rows: list[dict], arm: str, seed: int, run_dir: Path) -> dict:
    """A run's result: step axes and rewards averaged over its last quarter of steps (per-step
    samples are few), eval axes from its last evaluation and from its start (eval_start.json, when
    the run measured it), λ and gradient norms over the run."""
    last_quarter = rows[-max(1, len(rows) // 4) :]
    evaluated = [r for r in rows if r.get(EVAL_AXES[0]) is not None]
    result = {"arm": ARMS[arm][0], "seed": seed, "run_dir": str(run_dir)}
    result.update({axis: _mean(r.get(axis) for r in last_quarter) for axis in (*STEP_AXES, "reward_mean")})
    result.update({axis: evaluated[-1].get(axis) if evaluated else None for axis in EVAL_AXES})
    start = _heldout_start(run_dir)
    result[START_AXES[0]] = start.semantic_accuracy if start else None
    result[START_AXES[1]] = start.acoustic_wer if start else None
    final = result[EVAL_AXES[0]]
    result["eval_gain"] = final - start.semantic_accuracy if start and final is not None else None
    result["lambda_mean"] = _mean(r["lambda"] for r in rows)
    result.update({key: _mean(r.get(key) for r in rows) for key in ("grad_norm_text", "grad_norm_speech")})
    return result


def _heldout_start(run_dir: Path):
    from driver.heldout import HELDOUT_START, HeldOut

    path = Path(run_dir) / HELDOUT_START
    return HeldOut.from_json(path.read_text()) if path.exists() else None


def warm_start_row(all_rows: list[list[dict]], results: list[dict] = ()) -> dict:
    """The starting point: step 1's samples come from the warm-started policy in every run, and the
    eval split measured before step 1 (the same policy: the mean over the runs that measured it)."""
    firsts = [rows[0] for rows in all_rows if rows]
    return {
        "arm": "warm start (step 1)",
        **{axis: _mean(r.get(axis) for r in firsts) for axis in (*STEP_AXES, "reward_mean")},
        **{axis: _mean(r.get(start) for r in results) for axis, start in zip(EVAL_AXES, START_AXES)},
    }


def paired_differences(results: list[dict]) -> str:
    """For each of the paper's comparisons, per seed, arm x minus arm y on the held-out and the
    step axes: mean ± std over the seeds both arms ran, and each seed's difference."""
    by_key = {(r["arm"], r["seed"]): r for r in results}
    lines = [
        "| difference | seeds | " + " | ".join(PAIRED_AXES) + " |",
        "|---|---|" + "---|" * len(PAIRED_AXES),
    ]
    for x, y in PAIRS:
        name_x, name_y = ARMS[x][0], ARMS[y][0]
        seeds = sorted({s for a, s in by_key if a == name_x} & {s for a, s in by_key if a == name_y})
        if not seeds:
            continue
        cells = []
        for axis in PAIRED_AXES:
            pairs = [(by_key[name_x, s][axis], by_key[name_y, s][axis]) for s in seeds]
            diffs = [vx - vy for vx, vy in pairs if vx is not None and vy is not None]
            per_seed = ", ".join(f"{d:+.3f}" for d in diffs)
            cells.append(f"{_cell(diffs)} ({per_seed})" if diffs else "-")
        lines.append(f"| {x}-{y} ({name_x} - {name_y}) | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def results_table(results: list[dict], start: dict) -> str:
    lines = ["| arm | seeds | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    lines.append(
        f"| {start['arm']} | - | "
        + " | ".join(_cell([start[c]] if start.get(c) is not None else []) for c in COLUMNS)
        + " |"
    )
    for arm in dict.fromkeys(r["arm"] for r in results):
        mine = [r for r in results if r["arm"] == arm]
        cells = [_cell([r[c] for r in mine if r[c] is not None]) for c in COLUMNS]
        lines.append(f"| {arm} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def smoothed(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """Trailing moving average: per-step values come from 32 samples and are noisy."""
    values = [v for _, v in points]
    return [(step, statistics.mean(values[max(0, i - window + 1) : i + 1])) for i, (step, _) in enumerate(points)]


def plot_curves(results: list[dict], runs: dict[str, list[dict]], out: Path, window: int = 5) -> list[Path]:
    from driver.report import finite_points, line_chart

    written = []
    for axis in CURVES:
        smooth = axis in (*STEP_AXES, "reward_mean")  # per-step sample measures: noisy
        series = {}
        for arm in dict.fromkeys(r["arm"] for r in results):
            by_step: dict[int, list[float]] = {}
            for r in (r for r in results if r["arm"] == arm):
                for step, value in finite_points(runs[r["run_dir"]], axis):
                    by_step.setdefault(step, []).append(value)
            if by_step:
                mean_curve = [(s, statistics.mean(by_step[s])) for s in sorted(by_step)]
                series[arm] = smoothed(mean_curve, window if smooth else 1)
        if series:
            title = f"{axis}: mean over seeds" + (f", moving average of {window} steps" if smooth else "")
            written.append(line_chart(series, axis, title, out / f"curves_{axis}.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m driver.ablate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="pipeline.yaml")
    parser.add_argument("--task", choices=sorted(TASKS), default="hard")
    parser.add_argument("--arms", default="a,b,c,d,e")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="applied after the task's settings"
    )
    parser.add_argument(
        "--address", default=None, help="a running Ray cluster (or $RAY_ADDRESS); default: a new local one"
    )
    args = parser.parse_args(argv)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {', '.join(f'{k} ({v[0]})' for k, v in ARMS.items())}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    sets = [*TASKS[args.task], *args.set]
    from driver.preflight import PreflightError, check_cluster

    try:
        check_cluster(args.address)
    except PreflightError as err:
        parser.error(str(err))
    out = (args.out or ROOT / "runs" / f"ablation-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from driver.inputs import connect_ray
    from driver.outputs import write_parquet_atomic
    from wavalign.atomic import write_text_atomic
    from wavalign.config_file import read_config
    from wavalign.toy.assets import ensure_toy_assets

    cfg = read_config(args.config, sets)  # a bad --set fails here, before any run
    ensure_toy_assets(cfg.toy, cfg.model.layout)  # the warm start every arm starts from, built once
    connect_ray(args.address)  # one cluster shared by every run
    address = ray.get_runtime_context().gcs_address
    results, runs = [], {}
    started_all = time.monotonic()
    try:
        for seed in seeds:
            for arm in arms:
                started = time.monotonic()
                run_dir = run_arm(args.config, sets, arm, seed, args.steps, out, address)
                runs[str(run_dir)] = pq.read_table(run_dir / "metrics.parquet").to_pylist()
                results.append(summarise(runs[str(run_dir)], arm, seed, run_dir))
                shown = ", ".join(f"{k} {results[-1][k]:.3f}" for k in COLUMNS if results[-1][k] is not None)
                print(
                    f"[{time.monotonic() - started_all:.0f}s] {ARMS[arm][0]} seed {seed} "
                    f"({time.monotonic() - started:.0f}s): {shown}",
                    flush=True,
                )
                write_parquet_atomic(out / "results.parquet", pa.Table.from_pylist(results))
    finally:
        ray.shutdown()
    table = results_table(results, warm_start_row(list(runs.values()), results))
    differences = paired_differences(results)
    if differences:
        table += "\nPaired differences per seed (mean ± std over seeds; each seed's value in brackets):\n\n"
        table += differences
    header = (
        f"# Ablation: {len(arms)} arms x {len(seeds)} seeds, {args.steps} steps, task '{args.task}'\n\n"
        f"Settings on top of {args.config}: {' '.join(sets) or '(none)'}\n\n"
        f"Step axes and reward: mean over each run's last quarter of steps; eval axes: the last evaluation; "
        f"eval_gain: the last evaluation's semantic accuracy minus the same run's before step 1.\n\n"
    )
    write_text_atomic(out / "results.md", header + table)
    plot_curves(results, runs, out)
    print(table)
    print(f"results in {out} ({time.monotonic() - started_all:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
