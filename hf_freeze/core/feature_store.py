"""Where cached prefix features live: memory up to a byte budget, then a memory-mapped file.

Each entry is one example's features (``[kept positions, hidden]``), stored under a content digest.
Past the budget, new entries are appended to one file in the cache folder and read back through a
memory map, so a cache larger than RAM still works (at disk speed) instead of failing. On POSIX the
file is unlinked as soon as it is created (it lives while the store holds it open), so a run that is
killed leaves no spill file behind.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

# numpy has no bfloat16: such tensors are written and read as raw 16-bit words, same bytes.
_RAW = {torch.bfloat16: torch.int16, torch.float16: torch.int16}


@dataclass(frozen=True)
class _OnDisk:
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype


class FeatureStore:
    """A key -> tensor map holding at most ``max_memory_bytes`` in memory; the rest spills to disk.

    Example:
        >>> store = FeatureStore(max_memory_bytes=0)            # everything goes to the file
        >>> store.put(b"k", torch.ones(2, 3)); store.get(b"k").sum().item()
        6.0
        >>> store.close()
    """

    def __init__(self, max_memory_bytes: int, cache_dir: str | os.PathLike | None = None) -> None:
        self.max_memory_bytes = int(max_memory_bytes)
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self._memory: dict[bytes, torch.Tensor] = {}
        self._disk: dict[bytes, _OnDisk] = {}
        self.memory_bytes = 0
        self.disk_bytes = 0
        self._file = None
        self._path: str | None = None  # set only while the file has a name (not on POSIX, see _open)
        self._map: np.memmap | None = None

    def __len__(self) -> int:
        return len(self._memory) + len(self._disk)

    def __contains__(self, key: bytes) -> bool:
        return key in self._memory or key in self._disk

    def put(self, key: bytes, value: torch.Tensor) -> None:
        """Store a copy of ``value`` (detached, on the CPU, contiguous) under ``key``; a known key is kept."""
        if key in self:
            return
        value = value.detach().to("cpu", copy=True).contiguous()
        size = value.numel() * value.element_size()
        if self.memory_bytes + size <= self.max_memory_bytes:
            self._memory[key] = value
            self.memory_bytes += size
            return
        raw = value.view(_RAW.get(value.dtype, value.dtype)).numpy()
        handle = self._open()
        handle.write(raw.tobytes())
        self._disk[key] = _OnDisk(self.disk_bytes, tuple(value.shape), value.dtype)
        self.disk_bytes += size

    def get(self, key: bytes) -> torch.Tensor | None:
        """The stored tensor (a fresh tensor for disk entries), or None."""
        found = self._memory.get(key)
        if found is not None:
            return found
        entry = self._disk.get(key)
        if entry is None:
            return None
        raw_dtype = _RAW.get(entry.dtype, entry.dtype)
        item = torch.empty((), dtype=raw_dtype).element_size()
        count = int(np.prod(entry.shape)) if entry.shape else 1
        data = self._mapped()[entry.offset : entry.offset + count * item]
        array = np.frombuffer(data, dtype=torch.empty((), dtype=raw_dtype).numpy().dtype).reshape(entry.shape)
        return torch.from_numpy(array.copy()).view(entry.dtype)

    def _open(self):
        if self._file is None:
            folder = self.cache_dir or tempfile.gettempdir()
            os.makedirs(folder, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix="hf_freeze_features_", suffix=".bin", dir=folder)
            self._file = os.fdopen(fd, "w+b")
            if os.name == "posix":
                os.unlink(path)  # the open file keeps its data; nothing stays behind after a kill
            else:
                self._path = path
        self._map = None  # the file grows: map it again on the next read
        return self._file

    def _mapped(self) -> np.memmap:
        if self._map is None:
            self._file.flush()
            self._map = np.memmap(self._file, dtype=np.uint8, mode="r")
        return self._map

    def close(self) -> None:
        """Drop every entry and delete the spill file."""
        self._memory.clear()
        self._disk.clear()
        self.memory_bytes = self.disk_bytes = 0
        self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None and os.path.exists(self._path):
            os.remove(self._path)
        self._path = None
