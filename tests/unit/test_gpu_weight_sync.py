"""The GPU weight sync's CPU-testable parts: choosing the transfer from the config, the errors on CPU,
the NCCL rank plan, the deadlines, the weight source against vLLM's own base class, and the engine
arguments (none on CPU, so the CPU engine is built exactly as before). No Ray, no engine start."""

from __future__ import annotations

import doctest
import subprocess
import sys
import threading

import pytest
import torch

from actors import gpu_weight_sync as gws
from wavalign.config import InvalidConfig, PipelineConfig, RolloutConfig, load_config


def rollout(**settings) -> RolloutConfig:
    return RolloutConfig(**settings)


def test_auto_resolves_to_the_object_store_unless_colocated():
    assert rollout().weight_transfer_backend == "object_store"  # the default: CPU behaviour unchanged
    assert rollout(gpus_per_worker=1).weight_transfer_backend == "object_store"  # nccl: opt-in until run on a GPU
    assert rollout(gpus_per_worker=1, weight_transfer="nccl").weight_transfer_backend == "nccl"
    assert rollout(gpus_per_worker=0.5, colocate=True).weight_transfer_backend == "ipc"
    assert rollout(gpus_per_worker=1, weight_transfer="object_store").weight_transfer_backend == "object_store"


@pytest.mark.parametrize(
    "settings,problem",
    [
        ({"weight_transfer": "nccl"}, "rollout.weight_transfer: nccl needs GPUs"),
        ({"weight_transfer": "ipc", "colocate": True}, "rollout.weight_transfer: ipc needs GPUs"),
        ({"colocate": True}, "rollout.colocate: needs GPUs"),
        ({"weight_transfer": "nccl", "colocate": True, "gpus_per_worker": 0.5}, "rollout.weight_transfer: nccl cannot put two ranks"),
        ({"weight_transfer": "ipc", "gpus_per_worker": 1}, "rollout.weight_transfer: ipc shares CUDA memory"),
        ({"weight_transfer": "rdma"}, "rollout.weight_transfer: Input should be 'auto', 'object_store', 'nccl' or 'ipc'"),
    ],
)
def test_bad_transfer_settings_name_the_key(settings, problem):
    with pytest.raises(InvalidConfig) as err:
        load_config({"rollout": settings})
    assert err.value.problems[0].startswith(problem), err.value.problems


def test_the_gpu_path_refuses_cpu_with_a_clear_error():
    with pytest.raises(gws.WeightTransferUnavailable, match="resolves to object_store"):
        gws.gpu_backend(rollout())
    with pytest.raises(gws.WeightTransferUnavailable, match="rollout.weight_transfer nccl needs GPUs"):
        gws.require_gpus(gws.gpu_backend(rollout(gpus_per_worker=1, weight_transfer="nccl")), cuda_available=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPUs")
def test_a_gpu_rollout_worker_refuses_before_starting_an_engine():
    cfg = PipelineConfig(rollout={"gpus_per_worker": 1, "weight_transfer": "nccl"})
    with pytest.raises(gws.WeightTransferUnavailable, match="nccl needs GPUs"):
        gws.GpuRolloutWorker("/nonexistent-model", cfg)  # fails before reading the model or starting vLLM


def test_nccl_rank_plan():
    # learner rank 0; workers of 1 vLLM rank each at 1, 2, 3 -> world 4
    assert gws.nccl_rank_offsets(3) == ([1, 2, 3], 4)
    # tensor-parallel 2: worker 0 holds ranks 1-2, worker 1 ranks 3-4 -> world 5
    assert gws.nccl_rank_offsets(2, ranks_per_worker=2) == ([1, 3], 5)
    with pytest.raises(ValueError):
        gws.nccl_rank_offsets(0)


def test_each_worker_gets_its_own_rank_offset():
    sent = {"master_address": "10.0.0.1", "master_port": 1234, "rank_offset": 1, "world_size": 3, "packed": True}
    payloads = gws.per_worker_init_info(sent, ["rollout-0", "rollout-1"], [1, 2])
    assert [p["rank_offset"] for p in payloads.values()] == [1, 2]
    assert all({k: v for k, v in p.items() if k != "rank_offset"} == {k: v for k, v in sent.items() if k != "rank_offset"}
               for p in payloads.values())
    assert gws.per_worker_init_info({"packed": False}, ["a"], None) == {"a": {"packed": False}}  # ipc: unchanged
    with pytest.raises(ValueError):
        gws.per_worker_init_info(sent, ["a", "b"], [1])


def test_docstring_examples():
    result = doctest.testmod(gws)
    assert result.attempted > 0 and result.failed == 0


def test_bounded_call_returns_its_value_and_raises_its_error():
    assert gws.run_bounded(lambda: 42, 5.0, lambda: AssertionError("not stalled")) == 42
    with pytest.raises(ZeroDivisionError):
        gws.run_bounded(lambda: 1 / 0, 5.0, lambda: AssertionError("not stalled"))


def test_a_stalled_call_becomes_an_error_naming_the_silent_workers():
    release = threading.Event()
    client = gws.RolloutClient([("rollout-0", None), ("rollout-1", None)], timeout_s=0.05)
    client.phase, client.unanswered = "update_weights", {"rollout-1"}  # what call_workers leaves mid-call
    try:
        with pytest.raises(gws.WeightSyncError, match="not done with update_weights: rollout-1"):
            gws.run_bounded(release.wait, 0.05, lambda: gws.WeightSyncError(client.waiting_on()))
    finally:
        release.set()  # let the blocked thread end


def test_weight_source_matches_vllms_contract():
    """Metadata from one pass; every later pass is fresh and agrees with it (vLLM's own checker:
    WeightSource.iter_groups raises when iteration and metadata disagree)."""
    passes = []

    def weights():
        passes.append(1)
        yield "model.embed_tokens.weight", torch.zeros(10, 4)
        yield "model.layers.0.mlp.up_proj.weight", torch.ones(8, 4, dtype=torch.bfloat16)
        yield "model.norm.weight", torch.ones(4)

    source = gws._weight_source(weights)
    assert [(m.name, m.dtype, m.shape) for m in source.metadata()] == [
        ("model.embed_tokens.weight", torch.float32, (10, 4)),
        ("model.layers.0.mlp.up_proj.weight", torch.bfloat16, (8, 4)),
        ("model.norm.weight", torch.float32, (4,)),
    ]
    groups = [names for names, _ in source.iter_groups()]
    assert groups == [["model.embed_tokens.weight"], ["model.layers.0.mlp.up_proj.weight"], ["model.norm.weight"]]
    assert len(passes) == 2 and len(list(source)) == 3 and len(passes) == 3


def test_engine_arguments_are_empty_on_cpu():
    from actors.vllm_engine import _gpu_engine_args

    assert _gpu_engine_args(rollout()) == {}  # the CPU engine is built exactly as before
    nccl = _gpu_engine_args(rollout(gpus_per_worker=1, weight_transfer="nccl", gpu_memory_utilization=0.5))
    assert nccl["gpu_memory_utilization"] == 0.5 and nccl["weight_transfer_config"].backend == "nccl"
    assert "enable_sleep_mode" not in nccl
    ipc = _gpu_engine_args(rollout(gpus_per_worker=0.5, colocate=True))
    assert ipc["weight_transfer_config"].backend == "ipc" and ipc["enable_sleep_mode"] is True
    plain = _gpu_engine_args(rollout(gpus_per_worker=1, weight_transfer="object_store"))
    assert plain == {"gpu_memory_utilization": 0.9}


def test_the_module_imports_without_vllm():
    code = "import sys, actors.gpu_weight_sync; print('vllm' in sys.modules, 'deepspeed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]
