"""The weight sync's parts that need no cluster: choosing the transfer from the config, the NCCL rank
plan, the deadlines, the weight source against vLLM's own base class, the object_store chunks and
their zero-copy views, the engine arguments, the reload warnings. No Ray, no engine start. (The
sync itself, on the real stack: integration/test_rollout_pool.py and the pipeline runs.)"""

from __future__ import annotations

import doctest
import subprocess
import sys
import threading

import pytest
import torch

from actors import weight_sync as gws
from wavalign.config import InvalidConfig, RolloutConfig, load_config


@pytest.fixture(scope="module")
def weight_transfer():
    """actors.weight_transfer, imported by the tests that use it: it loads vLLM's weight-transfer API
    (seconds of imports that the rest of this module, and collection, need not spend)."""
    from actors import weight_transfer

    return weight_transfer


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
        (
            {"weight_transfer": "nccl", "colocate": True, "gpus_per_worker": 0.5},
            "rollout.weight_transfer: nccl cannot put two ranks",
        ),
        ({"weight_transfer": "ipc", "gpus_per_worker": 1}, "rollout.weight_transfer: ipc shares CUDA memory"),
        (
            {"weight_transfer": "rdma"},
            "rollout.weight_transfer: Input should be 'auto', 'object_store', 'nccl' or 'ipc'",
        ),
    ],
)
def test_bad_transfer_settings_name_the_key(settings, problem):
    with pytest.raises(InvalidConfig) as err:
        load_config({"rollout": settings})
    assert err.value.problems[0].startswith(problem), err.value.problems


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
    assert all(
        {k: v for k, v in p.items() if k != "rank_offset"} == {k: v for k, v in sent.items() if k != "rank_offset"}
        for p in payloads.values()
    )
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
    client = gws.RolloutClient([("rollout-1", None)], timeout_s=0.05)
    client.phase = "update_weights"  # what a call leaves while it waits
    try:
        with pytest.raises(gws.WeightSyncError, match="rollout workers in update_weights: rollout-1"):
            gws.run_bounded(release.wait, 0.05, lambda: gws.WeightSyncError(client.waiting_on()))
    finally:
        release.set()  # let the blocked thread end


def test_weight_source_matches_vllms_contract(weight_transfer):
    """Metadata from one pass; every later pass is fresh and agrees with it (vLLM's own checker:
    WeightSource.iter_groups raises when iteration and metadata disagree)."""
    passes = []

    def weights():
        passes.append(1)
        yield "model.embed_tokens.weight", torch.zeros(10, 4)
        yield "model.layers.0.mlp.up_proj.weight", torch.ones(8, 4, dtype=torch.bfloat16)
        yield "model.norm.weight", torch.ones(4)

    source = weight_transfer.weight_source(weights)
    assert [(m.name, m.dtype, m.shape) for m in source.metadata()] == [
        ("model.embed_tokens.weight", torch.float32, (10, 4)),
        ("model.layers.0.mlp.up_proj.weight", torch.bfloat16, (8, 4)),
        ("model.norm.weight", torch.float32, (4,)),
    ]
    groups = [names for names, _ in source.iter_groups()]
    assert groups == [["model.embed_tokens.weight"], ["model.layers.0.mlp.up_proj.weight"], ["model.norm.weight"]]
    assert len(passes) == 2 and len(list(source)) == 3 and len(passes) == 3


def test_engine_arguments_name_the_transfer_and_add_nothing_else_on_cpu():
    from actors.vllm_engine import _engine_args

    cpu = _engine_args(rollout())
    assert list(cpu) == ["weight_transfer_config"] and cpu["weight_transfer_config"].backend == "object_store"
    nccl = _engine_args(rollout(gpus_per_worker=1, weight_transfer="nccl", gpu_memory_utilization=0.5))
    assert nccl["gpu_memory_utilization"] == 0.5 and nccl["weight_transfer_config"].backend == "nccl"
    assert "enable_sleep_mode" not in nccl
    ipc = _engine_args(rollout(gpus_per_worker=0.5, colocate=True))
    assert ipc["weight_transfer_config"].backend == "ipc" and ipc["enable_sleep_mode"] is True


def test_the_control_plane_imports_without_vllm():
    """The driver imports actors.weight_sync; vLLM is loaded only where a transfer engine runs."""
    code = "import sys, actors.weight_sync, actors.pool; print('vllm' in sys.modules, 'deepspeed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def test_chunks_are_bounded_and_keep_the_order(weight_transfer):
    pairs = [("a", torch.zeros(4)), ("big", torch.zeros(1000)), ("b", torch.zeros(4)), ("c", torch.zeros(4))]
    chunks = list(weight_transfer._chunks(iter(pairs), chunk_bytes=64))
    assert [names for names, _ in chunks] == [["a"], ["big"], ["b", "c"]]  # an oversized tensor goes alone
    assert [n for names, _ in chunks for n in names] == [n for n, _ in pairs]


def test_a_chunk_is_read_as_views_of_its_bytes_in_any_dtype(weight_transfer):
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).view(2, 3),
        "b": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "c": torch.arange(4, dtype=torch.int64),
    }
    parts = [t.contiguous().view(-1).view(torch.uint8).numpy() for t in tensors.values()]
    info = weight_transfer.ObjectStoreUpdateInfo(
        names=list(tensors),
        dtype_names=[str(t.dtype).removeprefix("torch.") for t in tensors.values()],
        shapes=[list(t.shape) for t in tensors.values()],
        sizes=[p.nbytes for p in parts],
        total=3,
    )
    out = dict(weight_transfer.unpacked(info, parts))
    assert all(torch.equal(out[k], tensors[k]) and out[k].dtype == tensors[k].dtype for k in tensors)
    assert out["a"].data_ptr() == parts[0].ctypes.data  # a view of the received bytes, not a copy


def test_only_the_expected_reload_warnings_are_dropped(weight_transfer):
    import logging

    def warning(layer):
        return logging.LogRecord("vllm", logging.WARNING, "", 0, "%s: Failed to load weights", (layer,), None)

    expected = weight_transfer._ExpectedReloadWarnings()
    assert not expected.filter(warning("RotaryEmbedding"))  # no weights of its own
    # a layer left without weights would serve stale ones: a tied head too (it gets its own copy)
    assert expected.filter(warning("ParallelLMHead")) and expected.filter(warning("QKVParallelLinear"))


def test_the_weight_region_hands_over_every_dtype_in_place(tmp_path, weight_transfer):
    from actors.weight_region import ALIGN, MappedRegions, WeightRegion, region_size

    tensors = [
        torch.arange(6, dtype=torch.float32).view(2, 3),
        torch.tensor([1.5, -2.0, 3.0], dtype=torch.bfloat16),  # 6 bytes: the next tensor is realigned
        torch.arange(5, dtype=torch.int64),
    ]
    sizes = [t.numel() * t.element_size() for t in tensors]
    region = WeightRegion.create(str(tmp_path), region_size(sizes))
    first, after_first = region.write(tensors[:2], 0)  # two chunks, as the sender writes them
    second, _ = region.write(tensors[2:], after_first)
    offsets = first + second
    assert all(o % ALIGN == 0 for o in offsets) and offsets == sorted(set(offsets))
    info = weight_transfer.ObjectStoreUpdateInfo(
        names=["a", "b", "c"],
        dtype_names=[str(t.dtype).removeprefix("torch.") for t in tensors],
        shapes=[list(t.shape) for t in tensors],
        sizes=sizes,
        total=3,
    )
    reader = MappedRegions()
    got = [t for _, t in weight_transfer.unpacked(info, reader.parts(str(region.path), offsets, sizes))]
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, tensors))
    # the next version is written into the same file and read through the same mapping
    region.write([tensors[0] * 2], 0)
    again = reader.parts(str(region.path), offsets[:1], sizes[:1])
    assert torch.equal(torch.from_numpy(again[0].copy()).view(torch.float32).view(2, 3), tensors[0] * 2)
    with pytest.raises(ValueError, match="outgrew"):
        region.write([torch.zeros(1000)], 0)
    region.remove()
    assert not region.path.exists()


def test_a_weight_region_that_does_not_fit_is_one_line_and_leaves_nothing(tmp_path):
    from actors.weight_region import WeightRegion

    with pytest.raises(OSError, match=rf"{tmp_path}: cannot reserve .* MiB for the weights \(.* MiB free\)"):
        WeightRegion.create(str(tmp_path), 1 << 50)  # a petabyte
    assert list(tmp_path.iterdir()) == []


def test_only_regions_of_dead_learners_of_this_host_are_removed(tmp_path):
    import os
    import socket

    from actors.weight_region import PREFIX, remove_orphans

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    names = {
        "dead": f"{PREFIX}{host}-{dead.stdout.strip()}-abc",
        "alive": f"{PREFIX}{host}-{os.getpid()}-abc",
        "other host": f"{PREFIX}elsewhere-{dead.stdout.strip()}-abc",
        "not ours": "wavalign-chunk-123",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    assert remove_orphans(tmp_path) == [tmp_path / names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "dead")
