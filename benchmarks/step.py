"""Step benchmark, measured in one run on the same model, data and batch:

1. the pipeline (launch.py on a local Ray cluster: vLLM rollout workers, reward workers, the
   DeepSpeed learner, weight sync every step), from its metrics.parquet;
2. a single-process reference loop in the style of the authors' code: the training model itself
   samples with HF `generate` inside the step, the rewards are computed in the same process, and
   the same LearnerWorker step (same loss, same DeepSpeed settings) updates it. No weight sync.
   As in the authors' trainer (method.md §2: per_device_train_batch_size B = 1), each `generate`
   call samples the G responses of one prompt; the loop is also timed with all of the step's
   prompts in one `generate` call (`batched`), a stronger baseline than the authors' code.

Prints the median step time of each (the first step of each is warm-up and left out), the
speed-ups (target >= 5x against the authors' style) and the split of the pipeline's step into
generation, waiting for rewards, learning and sync. Usage:
    .venv/bin/python benchmarks/step.py [--config pipeline.yaml] [--steps 6] [--set k=v ...] [--hidden 512 --layers 8]
    .venv/bin/python benchmarks/step.py --pipeline-run runs/<run> [--steps 6]

`--pipeline-run` takes the pipeline's side from a run that already happened (its first `--steps`
steps, which must have run with train.max_staleness 0) and builds the reference loop from that run's
own resolved config.yaml: the same model, data, batch and prompts in order.

`--hidden/--layers` swap the warm-started tiny policy for a random Qwen2 of that size (toy
vocabulary and prompts): it rarely stops early, so every response runs to rollout.max_new_tokens,
the regime of real spoken answers where generation dominates a step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder leads sys.path; the repository root must come first.
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)


def pipeline_steps(config: str, sets: list[str], steps: int, out_dir: Path) -> list[dict]:
    overrides = [
        *sets,
        f"run.steps={steps}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "run.name=bench",
        f"run.output_dir={out_dir}",
    ]
    command = [sys.executable, "launch.py", "--config", config, *(arg for s in overrides for arg in ("--set", s))]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the pipeline run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    import pyarrow.parquet as pq

    (run_dir,) = out_dir.glob("bench-*")
    return pq.read_table(run_dir / "metrics.parquet").to_pylist()


def finished_steps(run_dir: Path, cfg, steps: int) -> list[dict]:
    """The first `steps` metrics rows of a finished run (on-policy: no overlap to flatter the pipeline)."""
    import pyarrow.parquet as pq

    if cfg.train.max_staleness:
        raise SystemExit(
            f"{run_dir}: ran with train.max_staleness {cfg.train.max_staleness}; the reference loop has no overlap"
        )
    if not (run_dir / "metrics.parquet").is_file():
        raise SystemExit(f"{run_dir}: no metrics.parquet (not a run directory)")
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()[:steps]
    if len(rows) < steps:
        raise SystemExit(f"{run_dir}: {len(rows)} steps in metrics.parquet, fewer than --steps {steps}")
    return rows


class ReferenceLoop:
    """One process: generate with the training model, score, and learn with the same objective."""

    def __init__(self, cfg, model_dir: str, prompts_per_call: int = 1) -> None:
        from actors.learner import LearnerWorker
        from actors.reward import RewardWorker
        from driver.pipeline import lambda_settings
        from learner.mixing import LambdaController
        from wavalign.ports import free_port

        self.cfg, self.prompts_per_call = cfg, prompts_per_call  # 0 = all of the step's prompts in one call
        self.learner = LearnerWorker(model_dir, cfg, master_port=free_port())
        self.scorer = RewardWorker(model_dir, cfg)
        self.controller = LambdaController(lambda_settings(cfg))
        self.layout = self.learner.layout

    def generate(self, rows) -> list[list[tuple[int, ...]]]:
        """The G responses of each row: one `generate` call per `self.prompts_per_call` rows."""
        per_call = self.prompts_per_call or len(rows)
        return [group for i in range(0, len(rows), per_call) for group in self._generate(rows[i : i + per_call])]

    def _generate(self, rows) -> list[list[tuple[int, ...]]]:
        import torch

        rc, layout = self.cfg.rollout, self.layout
        width = max(len(r.prompt_token_ids) for r in rows)
        ids = torch.full((len(rows), width), layout.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # left-padded, as HF generate wants
            ids[i, width - len(r.prompt_token_ids) :] = torch.tensor(r.prompt_token_ids)
            attention[i, width - len(r.prompt_token_ids) :] = 1
        model = self.learner.engine.module
        ids, attention = ids.to(model.device), attention.to(model.device)  # the learner's device (a GPU there)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=attention,
                do_sample=True,
                temperature=rc.temperature,
                top_p=rc.top_p,
                top_k=rc.top_k or None,
                max_new_tokens=rc.max_new_tokens,
                num_return_sequences=rc.group_size,
                eos_token_id=layout.eos_id,
                pad_token_id=layout.pad_id,
            )
        groups = []
        for g in range(len(rows)):
            samples = []
            for s in range(rc.group_size):
                response = out[g * rc.group_size + s, width:].tolist()
                if layout.eos_id in response:
                    response = response[: response.index(layout.eos_id) + 1]
                samples.append(tuple(response))
            groups.append(samples)
        return groups

    def step(self, rows) -> dict[str, float]:
        import torch

        from driver.reward_stream import reward_request
        from learner.advantages import group_advantages
        from wavalign.messages import TrainBatch

        started = time.perf_counter()
        groups = self.generate(rows)
        generated = time.perf_counter()
        requests = [
            reward_request(row, _Sample(i, ids)) for row, group in zip(rows, groups) for i, ids in enumerate(group)
        ]
        totals = [r.total for r in self.scorer.score(requests)]
        rewards = torch.tensor(totals, dtype=torch.float64).view(len(rows), -1)
        scored = time.perf_counter()
        lam = self.controller.step(rewards).lam
        batch = TrainBatch(
            rollout_prompts=[r.prompt_token_ids for r in rows for _ in groups[0]],
            rollout_responses=[ids for group in groups for ids in group],
            advantages=group_advantages(rewards).flatten().tolist(),
            sft_prompts=[r.prompt_token_ids for r in rows],
            sft_targets=[r.reference_token_ids for r in rows],
            lam=lam,
        )
        self.learner.train_step(batch)
        done = time.perf_counter()
        return {
            "step_seconds": done - started,
            "generation_seconds": generated - started,
            "reward_seconds": scored - generated,
            "learn_seconds": done - scored,
        }


class _Sample:  # what reward_request reads from a rollout record
    def __init__(self, index: int, ids: tuple[int, ...]) -> None:
        self.sample_index, self.response_token_ids = index, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipeline.yaml")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=0, help="random Qwen2 of this hidden size (0 = the tiny policy)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument(
        "--pipeline-run", default=None, help="a finished run's directory: its steps instead of a new run"
    )
    args = parser.parse_args()
    if args.pipeline_run and (args.set or args.hidden):
        parser.error("--pipeline-run takes the run's own config: no --set or --hidden with it")
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step of each side is warm-up)")
    from wavalign.config import InvalidConfig

    with tempfile.TemporaryDirectory() as tmp:
        try:
            measure(args, Path(tmp))
        except InvalidConfig as err:  # a bad --config / --set, or a --pipeline-run without its config.yaml
            raise SystemExit(f"error: {err}") from None


def measure(args, tmp: Path) -> None:
    from driver.inputs import read_prompt_rows, resolve_inputs
    from driver.prompts import PromptStream
    from wavalign.config_file import read_config
    from wavalign.model_files import load_tokenizer_and_layout

    if args.pipeline_run:
        cfg = read_config(Path(args.pipeline_run) / "config.yaml")
    else:
        cfg = read_config(args.config, args.set)
    if args.hidden:
        from wavalign.toy.resized import resized_model

        toy_dir, toy_train, _ = resolve_inputs(cfg)
        resized = resized_model(toy_dir, args.hidden, args.layers, tmp / "model")
        args.set = [*args.set, f"model.path={resized}", f'data.train_files=["{Path(toy_train[0]).resolve()}"]']
        cfg = read_config(args.config, args.set)
    if args.pipeline_run:
        rows_of_pipeline = finished_steps(Path(args.pipeline_run), cfg, args.steps)
    else:
        rows_of_pipeline = pipeline_steps(args.config, args.set, args.steps, tmp / "runs")
    model_dir, train_files, _ = resolve_inputs(cfg)
    tokenizer, layout = load_tokenizer_and_layout(model_dir, cfg.model.layout)
    stream = PromptStream(
        read_prompt_rows(cfg, len(tokenizer), train_files, layout),
        cfg.run.seed,
        cfg.train.rollout_batch_size // cfg.rollout.group_size,
    )  # the pipeline's prompts, in order
    step_prompts = [stream.next_step() for _ in range(args.steps)]
    references = {}
    for name, per_call in (("authors_style", 1), ("batched", 0)):  # each from the same initial weights
        loop = ReferenceLoop(cfg, str(model_dir), per_call)
        references[name] = [loop.step(prompts) for prompts in step_prompts]
        del loop

    def median(rows, key):
        return statistics.median(r[key] for r in rows[1:])

    pipe = median(rows_of_pipeline, "step_seconds")
    ref, batched = (median(references[name], "step_seconds") for name in ("authors_style", "batched"))
    rows_of_reference = references["authors_style"]
    result = {
        "steps_measured": args.steps - 1,
        "model_parameters_hidden_layers": [
            args.hidden or cfg.toy.hidden_size,
            args.layers if args.hidden else cfg.toy.num_layers,
        ],
        "responses_per_step": cfg.train.rollout_batch_size,
        "mean_response_tokens": round(
            statistics.mean(r["response_tokens"] for r in rows_of_pipeline) / cfg.train.rollout_batch_size, 1
        ),
        "pipeline_step_s": round(pipe, 3),
        "pipeline_split_s": {
            k: round(median(rows_of_pipeline, k), 3)
            for k in ("generation_seconds", "reward_wait_seconds", "learn_seconds", "sync_seconds")
        },
        "reference_step_s": round(ref, 3),
        "reference_split_s": {
            k: round(median(rows_of_reference, k), 3) for k in ("generation_seconds", "reward_seconds", "learn_seconds")
        },
        "speed_up": round(ref / pipe, 2),
        "batched_reference_step_s": round(batched, 3),
        "batched_reference_split_s": {
            k: round(median(references["batched"], k), 3)
            for k in ("generation_seconds", "reward_seconds", "learn_seconds")
        },
        "speed_up_vs_batched": round(batched / pipe, 2),
    }
    print(json.dumps(result, indent=2))
    print(
        f"pipeline step {pipe:.2f}s vs single-process HF-generate loop {ref:.2f}s "
        "(one prompt per generate call, as the "
        f"authors' trainer): speed-up {ref / pipe:.2f}x (target >= 5x); vs all prompts in one call {batched:.2f}s: "
        f"{batched / pipe:.2f}x"
    )


if __name__ == "__main__":
    main()
