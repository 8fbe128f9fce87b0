"""Rollout benchmark, measured in one run on the same model, prompts and sampling:

1. tokens/s of bare `vllm.LLM.generate` in this process (the baseline);
2. tokens/s of the rollout pool path (Ray workers, records with logprobs and modality masks);
3. the weight sync as the pipeline runs it (actors/weight_sync.py, the object_store backend of vLLM's
   weight-transfer API): a learner-side process of its own writes the weights into its shared-memory
   weight region and has every rollout worker load them, timed by the driver from the request to the
   last worker ready (the median of --repeats), next to the floor: a warm memory copy of the same
   bytes in the learner's process (the best of 5, into memory already touched). Measured twice: the
   workers on the learner's node (reading the region in place), then as workers on another node (the
   chunks through Ray's object store; on one machine the worker only reports another node id).

Prints the ratios (targets: pool/bare >= 0.95; sync/copy <= 5 for the 517 MiB model of
`--sync-hidden 1024`), and how much of the sync is vLLM's own reload (the workers' load phase: it
materialises each layer afresh and, on CPU, re-packs every linear weight for oneDNN), which any
transport pays. The toy model's sync (4 MiB) is all fixed cost (RPC round trips, vLLM's reload
set-up): it is reported as such.
`--sync-hidden H` repeats the sync on a larger random Qwen2 (hidden H, `--sync-layers` layers, the toy
tokenizer). It joins the cluster in $RAY_ADDRESS if set. Usage:
    .venv/bin/python benchmarks/rollout.py [--config pipeline.yaml] [--prompts 124] [--repeats 3] [--sync-hidden 1024]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

# Run as a script, this file's folder leads sys.path, where learner.py would shadow the `learner` package.
sys.path[0] = str(Path(__file__).resolve().parents[1])


class BareVLLM:
    """The baseline: `vllm.LLM.generate` in this process with the pool's exact sampling settings."""

    def __init__(self, cfg, model_dir, eos_id: int) -> None:
        import os

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cfg.rollout.kv_cache_gib))))
        if cfg.rollout.reproducible:  # the pool's engine mode (see actors/vllm_engine.py)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if not cfg.rollout.gpus_per_worker:  # the pool's CPU engines run torch eagerly, so does the baseline
            from actors.vllm_engine import eager_torch_on_cpu

            eager_torch_on_cpu()
        from vllm import LLM, SamplingParams

        rc = cfg.rollout
        # on GPUs, the pool's share of the GPU memory (vLLM's default 90% would leave the pool's own engine none)
        gpu = {"gpu_memory_utilization": rc.gpu_memory_utilization} if rc.gpus_per_worker else {}
        self.llm = LLM(
            model=str(model_dir),
            dtype=cfg.model.dtype,
            max_model_len=cfg.model.max_model_len,
            seed=cfg.run.seed,
            enforce_eager=True,
            **gpu,
        )
        self.params = SamplingParams(
            n=rc.group_size,
            temperature=rc.temperature,
            top_p=rc.top_p,
            top_k=rc.top_k,
            max_tokens=rc.max_new_tokens,
            stop_token_ids=[eos_id],
            logprobs=0,
        )

    def tokens_per_s(self, prompts) -> float:
        batch = [{"prompt_token_ids": list(ids)} for _, ids in prompts]
        started = time.perf_counter()
        outputs = self.llm.generate(batch, self.params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs) / (time.perf_counter() - started)

    def close(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()


def pool_tokens_per_s(pool, prompts) -> float:
    started = time.perf_counter()
    records = pool.generate(prompts)
    return sum(len(r.response_token_ids) for r in records) / (time.perf_counter() - started)


class Sender:
    """The learner's side of the sync (actors.weight_sync.LearnerSync) over an HF checkpoint's
    parameters, in a Ray worker of its own, as a LearnerWorker holds it over DeepSpeed's."""

    def __init__(self, model_dir: str, cfg) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from actors.weight_sync import LearnerSync

        if cfg.learner.torch_threads:
            torch.set_num_threads(cfg.learner.torch_threads)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir)
        rc = cfg.rollout
        self.side = LearnerSync(
            rc.weight_transfer_backend,
            0,
            self.named_weights,
            chunk_bytes=int(rc.weight_bucket_mb * 2**20),
            timeout_s=rc.update_timeout_s,
            region_dir=rc.weight_staging_dir,
        )

    def named_weights(self):
        """Tied parameters under each of their names, as DeepSpeedEngine.full_weights gives them."""
        return self.model.named_parameters(remove_duplicate=False)

    def send(self, version, workers):
        return self.side.sync(version, workers)

    def close(self) -> None:
        self.side.close()  # removes the weight region from shared memory

    def warm_copy_s(self, repeats: int = 5) -> tuple[int, float]:
        """(bytes, best seconds) of copying every parameter's bytes into memory already touched."""
        import numpy as np
        import torch

        sources = [p.detach().contiguous().view(-1).view(torch.uint8).numpy() for _, p in self.named_weights()]
        targets = [np.empty_like(a) for a in sources]
        best = float("inf")
        for _ in range(repeats + 1):  # the first pass touches the targets
            started = time.perf_counter()
            for target, source in zip(targets, sources):
                np.copyto(target, source)
            best = min(best, time.perf_counter() - started)
        return sum(a.nbytes for a in sources), best


class PeakMemory:
    """The growth of this process's resident memory, sampled every 2 ms while the block runs: what
    the driver holds of the weights during a sync (nothing, when the learner ships them itself)."""

    def __enter__(self) -> PeakMemory:
        import threading

        import psutil

        self.process, self.done = psutil.Process(), threading.Event()
        self.start = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def sync_vs_copy(pool, model_dir, cfg, repeats: int) -> dict:
    """Median driver-side seconds of a full sync (and the learner's split of it) against the floor,
    and how much the driver's memory grew meanwhile: the workers on the learner's node (they read its
    weight region in place), then as workers on another node (through the object store; on one
    machine the worker only reports another node id, so Ray's transfer between machines is not in it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the first worker's node, wherever the pool placed it (an actor that asks for no resources
    # goes to a node picked at random on a cluster of several)
    here = NodeAffinitySchedulingStrategy(ray.get(pool.members[0].handle.node_id.remote()), soft=False)
    sender = ray.remote(num_cpus=0)(Sender).options(scheduling_strategy=here).remote(str(model_dir), cfg)
    nbytes, floor = ray.get(sender.warm_copy_s.remote())
    result = {"weight_bytes": nbytes, "warm_copy_s": round(floor, 5)}
    for label in ("same_node", "other_node"):
        if label == "other_node":
            ray.get(sender.close.remote())  # the next sync connects anew and asks the workers' nodes
            for member in pool.members:
                ray.get(member.handle.__ray_call__.remote(lambda worker: setattr(worker, "node", "elsewhere")))
        syncs, phases = [], []
        with PeakMemory() as driver:
            for _ in range(repeats):
                started = time.perf_counter()
                report = pool.sync_weights(pool.version + 1, lambda v, w: ray.get(sender.send.remote(v, w)))
                syncs.append(time.perf_counter() - started)
                phases.append(report.phases)
        sync = statistics.median(syncs)
        result[label] = {
            "sync_s": round(sync, 4),
            "sync_best_s": round(min(syncs), 4),
            "phases_s": {k: round(statistics.median(p[k] for p in phases), 4) for k in phases[0]},
            "sync_over_copy": round(sync / floor, 2),
            "driver_memory_growth_mib": round(driver.growth_mib, 1),
        }
    ray.get(sender.close.remote())
    ray.kill(sender)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipeline.yaml")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--prompts", type=int, default=124, help="prompt groups per measured batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sync-hidden", type=int, default=0, help="also time weight updates of a larger model")
    parser.add_argument("--sync-layers", type=int, default=8)
    args = parser.parse_args()

    from wavalign.config_file import read_config
    from wavalign.data import read_rows
    from wavalign.model_files import load_tokenizer_and_layout
    from wavalign.toy.assets import ensure_toy_assets
    from wavalign.toy.resized import resized_model

    cfg = read_config(args.config, args.set)
    assets = ensure_toy_assets(cfg.toy, cfg.model.layout)
    tokenizer, layout = load_tokenizer_and_layout(assets.model_dir, cfg.model.layout)
    rows = read_rows(
        assets.data_file("train"), vocab_size=len(tokenizer), max_prompt_tokens=cfg.data.max_prompt_tokens
    ).rows
    prompts = [(r.row_id, r.prompt_token_ids) for r in (rows * (1 + args.prompts // len(rows)))[: args.prompts]]
    prompts = [(f"{pid}#{i}", ids) for i, (pid, ids) in enumerate(prompts)]

    import ray

    from actors.pool import RolloutPool
    from driver.inputs import connect_ray

    # Both engines stay up and the measurements alternate, so machine noise hits both alike. They
    # start side by side (an engine start is mostly one core's imports).
    connect_ray(None)  # the cluster of $RAY_ADDRESS, else a new local one
    pool = RolloutPool(cfg, str(assets.model_dir), log=lambda line: None, wait=False)
    bare_engine = BareVLLM(cfg, assets.model_dir, layout.eos_id)
    pool.wait_until_up()
    bare_engine.tokens_per_s(prompts[:4]), pool_tokens_per_s(pool, prompts[:4])  # warm-up
    bare_rates, pool_rates = [], []
    for _ in range(args.repeats):
        bare_rates.append(bare_engine.tokens_per_s(prompts))
        pool_rates.append(pool_tokens_per_s(pool, prompts))
    bare_engine.close()
    bare, pooled = statistics.median(bare_rates), statistics.median(pool_rates)
    print(
        f"bare vllm.LLM.generate: {bare:.0f} tokens/s; rollout pool ({len(pool.members)} worker): {pooled:.0f} tokens/s"
    )
    tiny = sync_vs_copy(pool, assets.model_dir, cfg, args.repeats)
    pool.shutdown()
    larger = {}
    if args.sync_hidden:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            big_dir = resized_model(assets.model_dir, args.sync_hidden, args.sync_layers, tmp)
            big_pool = RolloutPool(cfg, big_dir, log=lambda line: None)
            larger = sync_vs_copy(big_pool, big_dir, cfg, args.repeats)
            big_pool.shutdown()
    ray.shutdown()

    result = {
        "prompts": len(prompts),
        "group_size": cfg.rollout.group_size,
        "bare_tokens_per_s": round(bare, 1),
        "pool_tokens_per_s": round(pooled, 1),
        "pool_over_bare": round(pooled / bare, 3),
        "tiny_model_weights": tiny,
        "larger_model_weights": larger,
    }
    print(json.dumps(result, indent=2))
    print(f"pool / bare tokens/s = {result['pool_over_bare']:.3f} (target >= 0.95)")
    near = tiny["same_node"]
    print(
        f"tiny model ({tiny['weight_bytes'] / 2**20:.1f} MiB): sync {near['sync_s']:.3f}s, nearly all of it the fixed "
        f"cost of a sync (its bytes copy in {tiny['warm_copy_s'] * 1e3:.2f} ms)"
    )
    if larger:
        print_sync_ratios(larger)
    for label, w in (("tiny", tiny), ("larger", larger)):
        if w:
            grown = max(w[where]["driver_memory_growth_mib"] for where in ("same_node", "other_node"))
            print(
                f"driver memory growth during the {label} model's syncs: {grown:.1f} MiB "
                f"(its weights: {w['weight_bytes'] / 2**20:.1f} MiB)"
            )


def print_sync_ratios(w: dict) -> None:
    """The larger model's sync against the warm copy, and how much of it is vLLM's own reload: the
    workers' load phase, vLLM taking the bytes into fresh layers and preparing its kernels (on CPU it
    re-packs every linear layer's weight for oneDNN), which any transport pays."""
    copy, mib = w["warm_copy_s"], w["weight_bytes"] / 2**20
    for where, how in (("same_node", "workers on the learner's node"), ("other_node", "workers on another node")):
        sync = w[where]
        load = sync["phases_s"]["load"]
        print(
            f"larger model ({mib:.1f} MiB), {how}: sync / warm copy = {sync['sync_over_copy']:.2f}x "
            f"(target <= 5x); vLLM's own reload {load:.3f}s = {load / copy:.2f}x the copy, "
            f"the rest {max(sync['sync_s'] - load, 0.0) / copy:.2f}x"
        )


if __name__ == "__main__":
    main()
