"""Cache keys: a digest of each example's prefix inputs, so the cache is keyed by content, never by position.

Only the positions the attention mask keeps are hashed, together with their indexes: an example padded
on the right to another length gets the same key (its prefix output is the same), while a changed token,
a new augmentation or a shifted (left-padded) example gets another (its prefix output differs).
"""

from __future__ import annotations

import hashlib

import torch


def digests(tensors: dict[str, torch.Tensor], keep: torch.Tensor | None, size: int) -> list[bytes]:
    """One 16-byte BLAKE2 digest per example: each input's row at the kept positions, and those positions."""
    rows = {name: _raw(value.detach().cpu()) for name, value in sorted(tensors.items()) if value.shape[0] == size}
    keys = []
    for i in range(size):
        h = hashlib.blake2b(digest_size=16)
        kept = keep[i] if keep is not None else None
        if kept is not None:
            h.update(b"positions" + kept.nonzero().numpy().tobytes())
        for name, value in rows.items():
            if name == "attention_mask":
                continue
            row = value[i]
            if kept is not None and row.dim() >= 1 and row.shape[0] == kept.shape[0]:
                row = row[kept]
            h.update(f"{name}{tuple(row.shape)}{row.dtype}".encode())
            h.update(row.contiguous().numpy().tobytes())
        keys.append(h.digest())
    return keys


def _raw(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype in (torch.bfloat16, torch.float16):
        return tensor.view(torch.int16)
    return tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
