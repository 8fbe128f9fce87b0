"""wavalign-ray driver: `python launch.py --config pipeline.yaml [--set a.b=c ...] [--dry-run]`;
operators resize a running job's rollout pool with `python launch.py scale --workers N`.

What runs today (the foundation): resolve and snapshot the config, build or reuse the toy assets,
start (or join) a Ray cluster, start the rollout pool (vLLM workers), sample G responses for every
evaluation prompt and score both toy axes. The RL training loop (rollouts -> rewards -> advantages
and λ -> learner step -> weight sync) lands with the pipeline issue; until then this job says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from wavalign.config import InvalidConfig, PipelineConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pipeline YAML (see pipeline.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. rollout.group_size=8")
    parser.add_argument("--dry-run", action="store_true", help="validate, print the resolved config, start nothing")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scale"]:  # operator command against a running job
        from actors.control import scale_main

        return scale_main(argv[1:])
    args = parse_args(argv)
    from wavalign.config_file import config_yaml, read_config, save_config

    # 1. Resolve the config: file + overrides, validated as one tree.
    try:
        cfg = read_config(args.config, args.set)
    except InvalidConfig as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(config_yaml(cfg), end="")
        return 0

    # 2. Create the run directory and snapshot the resolved config into it.
    run_dir = Path(cfg.run.output_dir) / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    save_config(cfg, run_dir / "config.yaml")
    print(f"run dir: {run_dir}")

    # 3. Policy and data: the user's checkpoint and files, or the project's tiny model and toy task.
    model_path, eval_files = resolve_inputs(cfg)

    # 4. Ray: join the cluster we were submitted to, or start a local one (dashboard on 127.0.0.1).
    import ray

    from actors.control import apply_requests, start_control
    from actors.pool import RolloutPool

    connect_ray(args.address)
    pool = RolloutPool(cfg, str(model_path))
    control = start_control(cfg.run.name)  # `python launch.py scale --workers N` talks to it
    apply_requests(control, pool)

    # 5. Sample G responses per evaluation prompt (spread over the pool) and score both toy axes.
    rows = read_eval_rows(cfg, model_path, eval_files)
    print(f"sampling {cfg.rollout.group_size} responses for each of {len(rows)} evaluation prompts")
    started = time.monotonic()
    records = pool.generate([(r.row_id, r.prompt_token_ids) for r in rows])
    seconds = time.monotonic() - started
    summary = evaluate(cfg, model_path, rows, records)
    summary["rollout_tokens_per_s"] = sum(len(r.response_token_ids) for r in records) / seconds
    write_summary(run_dir / "eval.json", summary)
    print(json.dumps(summary, indent=2))

    # 6. Until the pipeline issue lands, this is where the job ends.
    print("note: the RL training loop is not implemented yet; this run sampled and evaluated the policy only")
    pool.shutdown()
    ray.shutdown()
    return 0


def resolve_inputs(cfg: PipelineConfig) -> tuple[Path, list[str]]:
    if cfg.model.path is not None:
        return Path(cfg.model.path), cfg.data.eval_files or cfg.data.train_files
    from wavalign.toy.assets import ensure_toy_assets

    assets = ensure_toy_assets(cfg.toy, cfg.model.layout)
    return assets.model_dir, cfg.data.eval_files or [str(assets.data_file("eval"))]


def connect_ray(address: str | None) -> None:
    import os

    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=os.cpu_count(), dashboard_host="127.0.0.1", include_dashboard=True)


def read_eval_rows(cfg: PipelineConfig, model_path: Path, files: list[str]) -> list:
    from wavalign.data import read_rows
    from wavalign.model_files import load_tokenizer_and_layout

    tokenizer, _ = load_tokenizer_and_layout(model_path, cfg.model.layout)
    rows = []
    for path in files:
        report = read_rows(path, vocab_size=len(tokenizer), max_prompt_tokens=cfg.data.max_prompt_tokens,
                           skip_invalid_rows=cfg.data.skip_invalid_rows, task_types=cfg.data.task_types)
        if report.skipped:
            print(f"data: skipped {len(report.skipped)} invalid rows of {path}; first: {report.skipped[0]}")
        rows += report.rows
    return rows


def evaluate(cfg: PipelineConfig, model_path: Path, rows: list, records: list) -> dict[str, float]:
    """Toy metrics when the toy task is in use; otherwise only response lengths."""
    from wavalign.model_files import load_tokenizer_and_layout

    tokenizer, layout = load_tokenizer_and_layout(model_path, cfg.model.layout)
    by_id = {r.row_id: r for r in rows}
    if cfg.model.path is not None or any(r.answer is None for r in rows):
        return {"responses": len(records), "mean_response_tokens": sum(len(r.response_token_ids) for r in records) / max(len(records), 1)}
    from wavalign.toy.assets import toy_scorer

    scorer = toy_scorer(layout, cfg.toy, tokenizer)
    return scorer.evaluate(
        [r.response_token_ids for r in records],
        [int(by_id[r.prompt_id].answer) for r in records],
        [r.reference_token_ids for r in rows],
    )


def write_summary(path: Path, summary: dict[str, float]) -> None:
    from wavalign.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
