"""Rollout benchmark, measured in one run on the same model, prompts and sampling:

1. tokens/s of bare `vllm.LLM.generate` in this process (the baseline);
2. tokens/s of the rollout pool path (Ray workers, records with logprobs and modality masks);
3. weight-update latency of the pool (safetensors buckets -> Ray -> vLLM worker -> reload in place)
   next to the time to copy the same bytes in memory.

Prints both ratios (targets: pool/bare >= 0.95; update/copy <= 3). `--sync-hidden H` repeats the
weight-update measurement on a larger random Qwen2 (hidden H, `--sync-layers` layers, the toy
tokenizer), where fixed per-update costs weigh less. It joins the cluster in $RAY_ADDRESS if set. Usage:
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
        from vllm import LLM, SamplingParams

        rc = cfg.rollout
        # on GPUs, the pool's share of the GPU memory (vLLM's default 90% would leave the pool's own engine none)
        gpu = {"gpu_memory_utilization": rc.gpu_memory_utilization} if rc.gpus_per_worker else {}
        self.llm = LLM(model=str(model_dir), dtype=cfg.model.dtype, max_model_len=cfg.model.max_model_len,
                       seed=cfg.run.seed, enforce_eager=True, **gpu)
        self.params = SamplingParams(n=rc.group_size, temperature=rc.temperature, top_p=rc.top_p, top_k=rc.top_k,
                                     max_tokens=rc.max_new_tokens, stop_token_ids=[eos_id], logprobs=0)

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


def update_vs_copy(pool, model_dir, bucket_bytes: int, repeats: int) -> dict[str, float]:
    """Median seconds of: a memory copy of the bucket bytes; putting them into Ray's object store
    (done by the learner, where the weights are); the pool's update of every worker from there."""
    from transformers import AutoModelForCausalLM

    from wavalign.weights import pack_buckets

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    buckets = list(pack_buckets(model.state_dict().items(), bucket_bytes))
    copies, puts, updates = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        copied = [bytearray(blob) for blob, _ in buckets]
        copies.append(time.perf_counter() - started)
        del copied
        started = time.perf_counter()
        refs = pool.put_buckets(buckets)
        puts.append(time.perf_counter() - started)
        updates.append(pool.sync_weights(refs, pool.version + 1))
    copy, put, update = (statistics.median(x) for x in (copies, puts, updates))
    return {
        "weight_bytes": sum(len(blob) for blob, _ in buckets),
        "memory_copy_s": round(copy, 5),
        "object_store_put_s": round(put, 5),
        "weight_update_s": round(update, 4),
        "update_over_copy": round(update / copy, 2),
        "put_and_update_over_copy": round((put + update) / copy, 2),
    }


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
    rows = read_rows(assets.data_file("train"), vocab_size=len(tokenizer), max_prompt_tokens=cfg.data.max_prompt_tokens).rows
    prompts = [(r.row_id, r.prompt_token_ids) for r in (rows * (1 + args.prompts // len(rows)))[: args.prompts]]
    prompts = [(f"{pid}#{i}", ids) for i, (pid, ids) in enumerate(prompts)]

    import ray

    from actors.pool import RolloutPool
    from wavalign.pipeline.inputs import connect_ray

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
    print(f"bare vllm.LLM.generate: {bare:.0f} tokens/s; rollout pool ({len(pool.members)} worker): {pooled:.0f} tokens/s")
    bucket_bytes = int(cfg.rollout.weight_bucket_mb * 2**20)
    tiny = update_vs_copy(pool, assets.model_dir, bucket_bytes, args.repeats)
    pool.shutdown()
    larger = {}
    if args.sync_hidden:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            big_dir = resized_model(assets.model_dir, args.sync_hidden, args.sync_layers, tmp)
            big_pool = RolloutPool(cfg, big_dir, log=lambda line: None)
            larger = update_vs_copy(big_pool, big_dir, bucket_bytes, args.repeats)
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
    for label, w in (("tiny model", tiny), ("larger model", larger)):
        if w:
            print(f"{label} ({w['weight_bytes'] / 2**20:.1f} MiB): weight update / memory copy = {w['update_over_copy']:.2f}x "
                  f"(target <= 3x); with the object-store put = {w['put_and_update_over_copy']:.2f}x")


if __name__ == "__main__":
    main()
