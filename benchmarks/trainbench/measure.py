"""Sizes the benchmark reports: trainable parameters, gradients, optimizer state, resident memory.

Everything counts each tensor once (tied weights are one tensor), so the figures are what the
process really holds, not what ``named_parameters()`` lists.
"""

from __future__ import annotations

import resource
from typing import Any

import torch
from torch import nn


def unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    seen: set[int] = set()
    params = []
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            params.append(param)
    return params


def trainable_numel(model: nn.Module) -> int:
    return sum(p.numel() for p in unique_parameters(model) if p.requires_grad)


def gradient_bytes(model: nn.Module) -> int:
    """Bytes held in ``.grad`` right now; read it after backward, before ``zero_grad``."""
    return sum(p.grad.nbytes for p in unique_parameters(model) if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of every tensor in ``optimizer.state``, split into per-parameter buffers and the rest.

    AdamW keeps two buffers the size of each parameter (``exp_avg``, ``exp_avg_sq``: the 8 bytes per
    float32 parameter the benchmark checks) plus a scalar ``step`` tensor per parameter (``other``).
    """
    per_param = other = 0
    for param, state in optimizer.state.items():
        for value in state.values():
            if not isinstance(value, torch.Tensor):
                continue
            if value.shape == param.shape:
                per_param += value.nbytes
            else:
                other += value.nbytes
    return {"per_parameter": per_param, "other": other, "total": per_param + other}


def optimizer_numel(optimizer: torch.optim.Optimizer) -> int:
    """How many parameter elements the optimizer was given (frozen ones included, if any)."""
    return sum(p.numel() for group in optimizer.param_groups for p in group["params"])


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (Linux ``clear_refs``); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


def peak_rss_bytes() -> int:
    """Peak resident memory since the last :func:`reset_peak_rss` (or since the process started)."""
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: the whole-process peak is the best there is
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024


def process_peak_rss_bytes() -> int:
    """Peak resident memory over the whole process life, imports and model loading included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def describe(model: nn.Module) -> dict[str, Any]:
    params = unique_parameters(model)
    return {
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "total_params": sum(p.numel() for p in params),
    }
