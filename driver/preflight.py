"""Every check a run can make before it starts Ray: `launch.py --dry-run` runs them all, and a
launch runs them all before it creates its run directory. What the config accepts but the
pipeline cannot run, reward functions that cannot be built (a judge without a URL, a reward model
that is not there), a policy that does not load, and training or eval data that is missing,
unreadable, invalid or empty: each is one PreflightError line naming the key or file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wavalign.config import ConfigError, PipelineConfig
from wavalign.data import DataError, PromptRow
from wavalign.layout import SpeechLayout
from wavalign.storage import RunStore, StorageError, join, resolve_output_dir, running_as_submitted_job


class PreflightError(ValueError):
    """Why the run cannot start, in one line."""


@dataclass(frozen=True)
class Inputs:
    """What a run starts from, checked."""

    model_path: Path
    tokenizer: Any
    layout: SpeechLayout
    train_rows: list[PromptRow]
    eval_rows: list[PromptRow]  # empty when evaluation is off


def check_reward_functions(cfg: PipelineConfig) -> None:
    """The configured reward functions can be built where the reward workers run: the judge has a
    URL, the reward model is an HF directory."""
    from rewards.registry import judge_settings

    names = [f.name for f in cfg.reward.functions]
    if "judge" in names:
        try:
            judge_settings(cfg.reward, rubric="")
        except ConfigError as err:
            raise PreflightError(str(err)) from None
    if "reward_model" in names:
        from wavalign.node_inputs import check_model_dir

        try:  # (the reward workers fetch it: a URI is not copied to the driver's node for the check)
            check_model_dir(cfg.reward.reward_model_path or "", "reward.reward_model_path")
        except (OSError, ValueError) as err:
            raise PreflightError(_one_line(err)) from None


def check_plugins(cfg: PipelineConfig, log=print) -> None:
    """The plug-ins (reward functions and speech decoder by import path) import and take the
    arguments the pipeline passes, with the shipped code (run.runtime_env's local py_modules and
    working_dir) importable as it will be in the workers."""
    from driver.inputs import submitted_runtime_env
    from rewards.registry import asr_backend_factory, reward_function_factories, speech_decoder_factory
    from wavalign.plugins import PluginError, importable

    env, base = cfg.run.runtime_env, Path.cwd()
    roots = []  # what Ray puts on the workers' sys.path: the folder above a package, a .whl/.zip, the working dir
    for key, entry in env.shipped_files():
        path = (base / entry).resolve()
        if not path.exists():
            raise PreflightError(f"run.runtime_env.{key}: {entry}: no such file or folder (from {base})")
        roots.append(path if key == "working_dir" or path.suffix in (".whl", ".zip") else path.parent)
    submitted = submitted_runtime_env()
    for key, value in env.ray_runtime_env(str(base)).items():
        twice = sorted(set(value) & set(submitted.get(key) or {})) if key == "env_vars" else submitted.get(key)
        if twice:
            raise PreflightError(
                f"run.runtime_env.{key}: the job was submitted with a runtime env that sets "
                f"{'variables ' + ', '.join(twice) if key == 'env_vars' else key} too; name them in one place"
            )
    with importable(roots):
        try:
            reward_function_factories(cfg.reward, cfg.run.seed)
            speech_decoder_factory(cfg.reward)
            if any(f.name == "asr_consistency" for f in cfg.reward.functions):
                asr_backend_factory(cfg.reward)
        except PluginError as err:
            if not (env.pip and "no module named" in str(err)):
                raise PreflightError(str(err)) from None
            log(f"note: {err}; left to the reward workers, which install run.runtime_env.pip first")


def check_cluster(address: str | None) -> None:
    """The cluster a run joins (--address, else RAY_ADDRESS; none: a local one of its own) answers
    there: a wrong address is one line before anything is written, not minutes of Ray's retries."""
    from wavalign.ports import unreachable

    named_by, address = ("--address", address) if address else ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS"))
    if address and (problem := unreachable(address, named_by)):
        raise PreflightError(problem)


def preflight(cfg: PipelineConfig, build_toy: bool = True, log=print) -> Inputs | None:
    """Run every check; build the toy assets first when the config uses them and they are missing
    (with build_toy=False, as a dry run: say so and skip the policy and data checks, None)."""
    check_reward_functions(cfg)
    check_plugins(cfg, log)
    from driver.inputs import read_prompt_rows, resolve_inputs
    from wavalign.model_files import check_model_code, load_tokenizer_and_layout
    from wavalign.toy.cache import foreign_assets_dir, toy_assets_ready
    from wavalign.vllm_view import unmatched_prefixes

    if cfg.model.path is None and (problem := foreign_assets_dir(cfg.toy)):
        raise PreflightError(problem)
    if cfg.model.path is None and not build_toy and not toy_assets_ready(cfg.toy, cfg.model.layout):
        log(
            f"note: the toy assets are not built yet in {cfg.toy.assets_dir} (a run builds them first, a few minutes); "
            "the policy and data checks wait for them"
        )
        return None

    try:
        model_path, train_files, eval_files = resolve_inputs(cfg)
        tokenizer, layout = load_tokenizer_and_layout(model_path, cfg.model.layout, cfg.model.trust_remote_code)
        check_model_code(model_path, cfg.model.trust_remote_code)
        if unmatched := unmatched_prefixes(model_path, cfg.model.extra_modules):
            raise ValueError(f"model.extra_modules: {', '.join(map(repr, unmatched))} names no tensor of {model_path}")
    except (OSError, ValueError) as err:
        raise PreflightError(
            _one_line(err if str(err).startswith(("model.", "toy.")) else f"model.path: {cfg.model.path}: {err}")
        ) from None
    rows = {}
    for split, files, needed in (("train", train_files, True), ("eval", eval_files, cfg.train.eval_every > 0)):
        if not needed:
            rows[split] = []
            continue
        try:
            rows[split] = read_prompt_rows(cfg, len(tokenizer), files, layout, log)
        except (DataError, OSError, ValueError) as err:
            raise PreflightError(_one_line(err)) from None
        if not rows[split]:
            hint = "" if split == "train" else " (train.eval_every: 0 runs without evaluation)"
            raise PreflightError(f"data.{split}_files: no usable rows in {', '.join(files)}{hint}")
    a = cfg.algorithm
    if (
        a.objective == "dpo"
        and a.dpo_pairs == "offline"
        and (missing := [r for r in rows["train"] if r.rejected_token_ids is None])
    ):
        raise PreflightError(
            f"algorithm.dpo_pairs: offline needs rejected_token_ids in every train row; {len(missing)} of "
            f"{len(rows['train'])} have none (first: {missing[0].row_id}); python -m learner.dpo_pairs "
            "--from-rollouts makes pair rows from a run's rollouts"
        )
    per_step = cfg.train.rollout_batch_size // cfg.rollout.group_size
    if per_step > len(rows["train"]):
        raise PreflightError(
            f"train.rollout_batch_size: {cfg.train.rollout_batch_size} responses are {per_step} prompts per step; "
            f"the train data has {len(rows['train'])} usable rows"
        )
    return Inputs(Path(model_path), tokenizer, layout, rows["train"], rows["eval"])


def new_run_store(cfg: PipelineConfig, stamp: str) -> RunStore:
    """A new run's storage: run.output_dir/<run.name>-<stamp>, a path made absolute or a URI (a
    relative path in a submitted job is an error with the fix)."""
    try:
        return RunStore(
            join(resolve_output_dir(cfg.run.output_dir, running_as_submitted_job()), f"{cfg.run.name}-{stamp}")
        )
    except StorageError as err:
        raise PreflightError(str(err)) from None


def resumed_run_store(location: str) -> tuple[RunStore, Path]:
    """The storage of a run to resume (a folder or a URI) and its config.yaml, fetched here."""
    try:
        store = RunStore(resolve_output_dir(location, running_as_submitted_job(), key="--resume"))
        return store, store.fetch("config.yaml")
    except (OSError, ValueError) as err:  # StorageError is a ValueError
        raise PreflightError(f"--resume: {_one_line(err)}") from None


def check_resume(store: RunStore) -> None:
    """A run to resume: its `latest` pointer names one of its complete checkpoints."""
    from driver.checkpoint import latest_checkpoint

    try:
        latest_checkpoint(store)
    except (OSError, ValueError) as err:
        raise PreflightError(f"--resume: {_one_line(err)}") from None


def _one_line(err: object) -> str:
    return " ".join(str(err).split())
