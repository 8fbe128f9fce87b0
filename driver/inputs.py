"""What a run starts from: the policy checkpoint and its data (the user's, or the project's tiny
model and toy task), and the Ray cluster it runs on."""

from __future__ import annotations

import json
import os
from pathlib import Path

from wavalign.config import PipelineConfig
from wavalign.data import PromptRow
from wavalign.layout import SpeechLayout
from wavalign.node_inputs import policy_directory, stage_directory
from wavalign.ray_join import JOIN_TIMEOUT_S, join_cluster
from wavalign.storage import RunStore, is_uri
from wavalign.worker_log import RUN_STORAGE_ENV


def resolve_inputs(cfg: PipelineConfig) -> tuple[Path, list[str], list[str]]:
    """(the policy's directory on this node, train files, eval files). A model.path URI is fetched
    to this node first; the toy assets are built here first when missing. (The data files are read
    by the driver alone: they need to be on its node only.)"""
    model_dir = policy_directory(cfg)  # the toy assets are built there when they are the policy
    if cfg.model.path is not None:
        return model_dir, cfg.data.train_files, cfg.data.eval_files
    from wavalign.toy.assets import ToyAssets

    assets = ToyAssets(Path(cfg.toy.assets_dir))
    return (
        model_dir,
        cfg.data.train_files or [str(assets.data_file("train"))],
        cfg.data.eval_files or [str(assets.data_file("eval"))],
    )


def model_for_workers(cfg: PipelineConfig, model_dir: Path, store: RunStore) -> str:
    """Where every worker, on any node, reads the policy: model.path as given (a URI, fetched once
    per node; or a folder made absolute, which on several nodes must be one they all mount), or, for
    the project's tiny model (built on the driver's node alone), its copy in the run's storage."""
    if cfg.model.path is None:
        return stage_directory(model_dir, store, "inputs/model")
    return cfg.model.path if is_uri(cfg.model.path) else str(Path(cfg.model.path).resolve())


def read_prompt_rows(
    cfg: PipelineConfig, vocab_size: int, files: list[str], layout: SpeechLayout, log=print
) -> list[PromptRow]:
    """Every valid row of the files; skipped rows are counted and the first is shown, rows of other
    task types are counted by type. Row ids must be unique: they key a step's groups."""
    from wavalign.data import read_rows

    rows: list[PromptRow] = []
    for path in files:
        report = read_rows(
            path,
            vocab_size=vocab_size,
            max_prompt_tokens=cfg.data.max_prompt_tokens,
            skip_invalid_rows=cfg.data.skip_invalid_rows,
            task_types=cfg.data.task_types,
            layout=layout,
        )
        if report.skipped:
            log(f"data: skipped {len(report.skipped)} invalid rows of {path}; first: {report.skipped[0]}")
        if report.filtered:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(report.filtered.items()))
            log(
                f"data: left out {sum(report.filtered.values())} rows of {path} whose task_type is not in "
                f"data.task_types {cfg.data.task_types} ({kinds})"
            )
        rows += report.rows
    seen: set[str] = set()
    for row in rows:
        if row.row_id in seen:
            raise ValueError(f"data: row id {row.row_id!r} appears more than once in {files}")
        seen.add(row.row_id)
    return rows


def submitted_runtime_env() -> dict:
    """The runtime env the job was submitted with (`ray job submit --runtime-env-json`/`--working-dir`),
    empty for a driver started by hand."""
    return json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}


def connect_ray(
    address: str | None,
    log_to_driver: bool = True,
    run_storage: str | None = None,
    shipped: dict | None = None,
    join_timeout_s: float = JOIN_TIMEOUT_S,
) -> None:
    """Join the cluster we were submitted to (RAY_ADDRESS, set by `ray job submit`) or the given
    address; otherwise start a local cluster with its dashboard on 127.0.0.1. log_to_driver: the
    workers' output on this process's console too; run_storage: where the job's workers put their
    logs (wavalign/worker_log.py); shipped: run.runtime_env as Ray's dict (the plug-ins' code and
    packages), the job's runtime env for every worker, merged with the submitted one (preflight has
    checked that they set no field twice)."""
    import ray

    from wavalign.failpoints import forwarded_env

    address = address or os.environ.get("RAY_ADDRESS")
    # fault tests' failpoints reach the workers (empty in real runs), unless the submitted job's own
    # runtime env sets them already (Ray refuses a variable set twice)
    job_env = submitted_runtime_env().get("env_vars") or {}
    env = {key: value for key, value in forwarded_env().items() if key not in job_env}
    if run_storage:
        env[RUN_STORAGE_ENV] = run_storage
    shipped = dict(shipped or {})
    env.update(shipped.pop("env_vars", {}))
    runtime_env = {**shipped, **({"env_vars": env} if env else {})} or None
    if address:
        join_cluster(address, join_timeout_s, runtime_env=runtime_env, log_to_driver=log_to_driver)
    else:
        # "local": always a new cluster, never whatever /tmp/ray last recorded (possibly dead)
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            dashboard_host="127.0.0.1",
            include_dashboard=True,
            runtime_env=runtime_env,
            log_to_driver=log_to_driver,
        )
