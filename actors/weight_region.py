"""A file in shared memory that holds one policy version's weights: the learner's sending rank writes
each version into it, and the rollout workers on its node (and their vLLM worker processes) read it
in place. Created once per connect and reused by every version, so after the first sync both sides
touch memory that is already mapped: a sync on one node costs a copy in and vLLM's own reload, not a
trip through Ray's object store (a further copy, into memory freshly allocated for each chunk).

The space is reserved when the file is made (posix_fallocate): a full shared-memory folder is a
warning and the object store carries the weights instead, never a SIGBUS in the middle of a copy.
The file is the project's: it is removed when the transfer engine shuts down or the process exits,
and a file of a learner process that no longer runs on this host is removed when the next one is
made.
"""

from __future__ import annotations

import atexit
import os
import socket
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

PREFIX = "wavalign-weights-"
ALIGN = 64  # every tensor starts on a cache line (and on its dtype's alignment)


def shared_folder(configured: str) -> str:
    """rollout.weight_staging_dir when it exists (shared memory, /dev/shm), else the temporary folder:
    where the learner's region and the workers' staging files go."""
    return configured if os.path.isdir(configured) else tempfile.gettempdir()


def aligned(nbytes: int) -> int:
    """
    >>> aligned(1), aligned(64), aligned(65)
    (64, 64, 128)
    """
    return -(-nbytes // ALIGN) * ALIGN


class WeightRegion:
    """The writer's side: `write` places tensors one after another, each at an aligned offset."""

    def __init__(self, path: Path, nbytes: int) -> None:
        self.path, self.nbytes = path, nbytes
        self.memory = torch.from_file(str(path), shared=True, size=nbytes, dtype=torch.uint8)
        atexit.register(self.remove)

    @classmethod
    def create(cls, directory: str, nbytes: int) -> WeightRegion:
        """A new region of nbytes in `directory`; raises OSError (naming the folder and the space it
        lacks) when the folder cannot hold it."""
        folder = Path(directory)
        remove_orphans(folder)
        path = folder / f"{PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(handle, 0, max(nbytes, 1))
        except OSError as err:
            os.unlink(path)
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            raise OSError(
                f"{folder}: cannot reserve {nbytes / 2**20:.0f} MiB for the weights ({free / 2**20:.0f} MiB free): "
                f"{err.strerror}"
            ) from None
        finally:
            os.close(handle)
        return cls(path, nbytes)

    def write(self, tensors: Sequence[torch.Tensor], offset: int) -> tuple[list[int], int]:
        """Copies tensors in from `offset` on. Returns (each tensor's offset, the offset after them)."""
        offsets = []
        for tensor in tensors:
            size = tensor.numel() * tensor.element_size()
            if offset + size > self.nbytes:
                raise ValueError(f"the weights outgrew their region ({self.nbytes} bytes): the model changed shape")
            target = self.memory[offset : offset + size].view(tensor.dtype).view(tensor.shape)
            target.copy_(tensor.detach())
            offsets.append(offset)
            offset += aligned(size)
        return offsets, offset

    def read(self, offsets: Sequence[int], sizes: Sequence[int]) -> list[np.ndarray]:
        """Views of the bytes at offsets (for `ray.put`, which copies them into the object store)."""
        return slices(self.memory.numpy(), offsets, sizes)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)  # mappings that workers still hold stay valid until released


def region_size(sizes: Sequence[int]) -> int:
    """
    >>> region_size([4, 100, 64])
    256
    """
    return sum(aligned(s) for s in sizes)


def remove_orphans(folder: Path) -> list[Path]:
    """Removes regions that a learner process of this host left behind when it died (never a file of a
    process that still runs, or of another host sharing the folder). Returns what it removed."""
    host, removed = socket.gethostname(), []
    for path in folder.glob(f"{PREFIX}{host}-*"):
        pid = path.name.removeprefix(f"{PREFIX}{host}-").split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class MappedRegions:
    """The reader's side: each region mapped once and kept (later versions read warm pages); a new
    region (the learner connected again) replaces the old mapping."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.memory: np.ndarray | None = None

    def parts(self, path: str, offsets: Sequence[int], sizes: Sequence[int]) -> list[np.ndarray]:
        if path != self.path:
            self.path, self.memory = path, np.memmap(path, dtype=np.uint8, mode="r")
        return slices(self.memory, offsets, sizes)


def slices(memory: np.ndarray, offsets: Sequence[int], sizes: Sequence[int]) -> list[np.ndarray]:
    """Views of a region's bytes, one per tensor."""
    return [memory[o : o + s] for o, s in zip(offsets, sizes, strict=True)]
