"""Packing weights into safetensors buckets."""

import torch

from wavalign.weights import pack_buckets, unpack_bucket


def test_buckets_are_bounded_complete_and_round_trip():
    tensors = [(f"t{i}", torch.full((256,), float(i))) for i in range(10)]  # 1 KiB each (float32)
    buckets = list(pack_buckets(tensors, bucket_bytes=3 * 1024))
    assert [count for _, count in buckets] == [3, 3, 3, 1]
    merged = {k: v for blob, _ in buckets for k, v in unpack_bucket(blob).items()}
    assert sorted(merged) == sorted(name for name, _ in tensors)  # safetensors orders keys itself
    assert all(torch.equal(merged[name], t) for name, t in tensors)


def test_oversized_tensor_gets_its_own_bucket():
    buckets = list(pack_buckets([("small", torch.zeros(4)), ("big", torch.zeros(1000)), ("tail", torch.zeros(4))], 64))
    assert [count for _, count in buckets] == [1, 1, 1]


def test_tied_alias_is_sent_under_its_own_name():
    embed = torch.randn(8, 4)
    buckets = list(pack_buckets([("model.embed_tokens.weight", embed), ("lm_head.weight", embed)], 1 << 20))
    merged = unpack_bucket(buckets[0][0])
    assert set(merged) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert torch.equal(merged["lm_head.weight"], embed)


def test_bucket_views_read_the_tensors_without_copying():
    import numpy as np

    from wavalign.weights import bucket_views

    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2, dtype=torch.bfloat16),
               "empty": torch.zeros(0, 3)}
    ((blob, count),) = pack_buckets(tensors.items(), 1 << 20)
    store = np.frombuffer(blob, dtype=np.uint8)  # what a worker gets from Ray's object store
    views = bucket_views(store)
    assert count == 4 and set(views) == set(tensors)
    assert all(torch.equal(views[k], tensors[k]) and views[k].shape == tensors[k].shape for k in tensors)
    base = store.ctypes.data
    assert base <= views["a"].data_ptr() < base + len(blob)  # a view into the buffer, not a copy


def test_only_the_expected_reload_warnings_are_dropped():
    import logging

    from actors.weight_receiver import _ExpectedReloadWarnings

    def warning(layer):
        return logging.LogRecord("vllm", logging.WARNING, "", 0, "%s: Failed to load weights", (layer,), None)

    tied, untied = _ExpectedReloadWarnings(tied_head=True), _ExpectedReloadWarnings(tied_head=False)
    assert not tied.filter(warning("RotaryEmbedding")) and not tied.filter(warning("ParallelLMHead"))
    assert untied.filter(warning("ParallelLMHead"))  # an untied head must receive its weights: the warning shows
    assert tied.filter(warning("QKVParallelLinear")) and not untied.filter(warning("RotaryEmbedding"))
