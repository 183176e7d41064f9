"""Optimizer parameter groups from a freeze plan: readable names and layer-wise learning-rate decay.

``Trainer.create_optimizer`` builds two groups (weight decay / no weight decay) from the trainable
parameters. These helpers work on that optimizer *after* it is built and before it has any state:
they name each group and, with ``layer_lr_decay``, split each group by layer with its own ``lr``.
Working on the built optimizer keeps every optimizer class that ``Trainer`` can build (including
``optimizer_cls_and_kwargs``) without re-implementing how it is created.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from ..core.plan import GROUP_EMBEDDINGS, FreezePlan

logger = logging.getLogger("hf_freeze")

# Prefixes that wrappers (FSDP1, activation checkpointing, torch.compile, DDP) put before parameter names.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def plain_name(name: str) -> str:
    """The parameter name as the unwrapped model reports it."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name.removeprefix("module.")


def param_names(model: nn.Module) -> dict[int, str]:
    """``id(param)`` -> plain parameter name."""
    return {id(p): plain_name(n) for n, p in model.named_parameters()}


def is_standard_grouping(
    optimizer: torch.optim.Optimizer, model: nn.Module, decay_names: Iterable[str]
) -> bool:
    """True when ``optimizer`` holds exactly ``Trainer``'s two groups (decay, then no decay), in order.

    GaLore, LOMO, layer-wise and factory optimizers group parameters their own way; those are left alone.
    """
    if not isinstance(optimizer, torch.optim.Optimizer) or len(optimizer.param_groups) != 2:
        return False
    decay = set(decay_names)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    expected = [[id(p) for n, p in named if n in decay], [id(p) for n, p in named if n not in decay]]
    groups = optimizer.param_groups
    if set(groups[0]) != set(groups[1]):
        return False
    return [[id(p) for p in g["params"]] for g in groups] == expected


def layer_scales(plan: FreezePlan, decay: float) -> dict[str, float]:
    """Plan group -> learning-rate factor: layer ``i`` of ``L`` gets ``decay**(L - i)``, embeddings
    ``decay**(L + 1)``, everything else (head, final norm, pooler) ``1``. Each stack counts its own ``L``."""
    sizes = {s["path"]: s["num_blocks"] for s in plan.stacks}
    deepest = max(sizes.values(), default=0)
    scales: dict[str, float] = {}
    for p in plan.params:
        if p.stack is not None and p.layer is not None:
            scales[p.group] = decay ** (sizes.get(p.stack, deepest) - p.layer)
        elif p.group == GROUP_EMBEDDINGS:
            scales[p.group] = decay ** (deepest + 1)
        else:
            scales[p.group] = 1.0
    return scales


def regroup(
    optimizer: torch.optim.Optimizer,
    names: dict[int, str],
    plan: FreezePlan | None,
    layer_lr_decay: float = 1.0,
) -> list[str]:
    """Name ``Trainer``'s two groups ``decay``/``no_decay``; with ``layer_lr_decay`` != 1, split each by plan
    group (``<group>/decay``) with ``lr`` scaled per :func:`layer_scales`. Returns the group names.

    Must run before the optimizer has state (right after it is built): it replaces ``param_groups``.
    """
    labels = ("decay", "no_decay")
    if layer_lr_decay == 1.0 or plan is None:
        for group, label in zip(optimizer.param_groups, labels):
            group["name"] = label
        return [g["name"] for g in optimizer.param_groups]

    scales = layer_scales(plan, layer_lr_decay)
    group_of = {}
    for p in plan.params:
        group_of[p.name] = p.group
        for alias in p.aliases:
            group_of[alias] = p.group
    order = {g["group"]: i for i, g in enumerate(plan.groups())}
    new_groups = []
    for group, label in zip(optimizer.param_groups, labels):
        by_plan_group: dict[str, list[torch.nn.Parameter]] = {}
        for param in group["params"]:
            by_plan_group.setdefault(group_of.get(names.get(id(param), ""), "other"), []).append(param)
        for plan_group in sorted(by_plan_group, key=lambda g: order.get(g, len(order))):
            scale = scales.get(plan_group, 1.0)
            params = by_plan_group[plan_group]
            new_groups.append({**group, "params": params, "lr": group["lr"] * scale, "name": f"{plan_group}/{label}"})
    optimizer.param_groups = new_groups
    return [g["name"] for g in new_groups]


def describe(optimizer: torch.optim.Optimizer) -> str:
    """One line per group: name, tensor count, size, lr and weight decay (nanoGPT-style report)."""
    lines = []
    for i, group in enumerate(optimizer.param_groups):
        numel = sum(p.numel() for p in group["params"])
        lines.append(
            f"{group.get('name', i)}: {len(group['params'])} tensors, {numel:,} params, "
            f"lr={group.get('lr')}, weight_decay={group.get('weight_decay')}"
        )
    return "\n".join(lines)


def frozen_in_optimizer(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> list[str]:
    """Names of parameters the optimizer holds that do not require grad (a user-built optimizer)."""
    found = []
    for group in getattr(optimizer, "param_groups", []):
        for param in group["params"]:
            if isinstance(param, torch.Tensor) and not param.requires_grad:
                found.append(names.get(id(param), f"<unnamed {tuple(param.shape)}>"))
    return found
