"""Policy weights on the wire: named tensors packed into safetensors buckets of bounded size, so a
large model streams to the rollout workers without a second full copy in memory at once."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import safetensors.torch
import torch


def pack_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Yields (safetensors blob, number of tensors) per bucket of at most ~bucket_bytes (one tensor
    larger than that forms its own bucket). Tensors are copied contiguous to CPU as they are packed;
    one sharing storage with an earlier one (tied weights) is sent as its own copy."""
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    seen_storage: set[int] = set()
    for name, tensor in named_tensors:
        storage = tensor.untyped_storage().data_ptr()
        tensor = tensor.detach().to("cpu").contiguous()
        if storage in seen_storage:
            # A tied alias (lm_head of tied embeddings). vLLM must receive it under its own name: its
            # in-place reload restores any layer that got no weights, which would untie a stale head.
            tensor = tensor.clone()
        seen_storage.add(storage)
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield safetensors.torch.save(bucket), len(bucket)
            bucket, size = {}, 0
        bucket[name] = tensor
        size += nbytes
    if bucket:
        yield safetensors.torch.save(bucket), len(bucket)


def unpack_bucket(blob: bytes) -> dict[str, torch.Tensor]:
    return safetensors.torch.load(blob)
