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


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def bucket_views(buffer) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors bucket as views of `buffer` (bytes, memoryview or a uint8 array,
    e.g. straight from Ray's object store): no copy. They are read-only; whoever keeps them must copy.
    Layout: 8-byte little-endian header length, the JSON header, then the data."""
    import json
    import warnings

    view = memoryview(buffer).cast("B")
    header_len = int.from_bytes(view[:8], "little")
    header = json.loads(bytes(view[8 : 8 + header_len]))
    start = 8 + header_len
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that the buffer is not writable
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = _DTYPES[entry["dtype"]]
            begin, end = entry["data_offsets"]
            count = (end - begin) // torch.empty((), dtype=dtype).element_size()
            flat = torch.frombuffer(view, dtype=dtype, count=count, offset=start + begin) if count else torch.empty(0, dtype=dtype)
            out[name] = flat.view(entry["shape"])
    return out
