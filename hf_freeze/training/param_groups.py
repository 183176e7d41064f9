"""Optimizer parameter groups from a freeze plan: one pure builder, used at creation and by unfreezing.

:func:`param_groups` has the shape of timm's ``param_groups_layer_decay``: plan, named parameters,
decay names, lr, weight decay and layer decay in; a list of named groups out. ``FreezingTrainer``
lets ``Trainer.create_optimizer`` build the optimizer (so every optimizer class, factory and keyword
``Trainer`` knows keeps working) and, when it holds ``Trainer``'s standard two groups, replaces them
with the builder's groups before the optimizer has any state (:func:`install`). Gradual unfreezing
calls the same builder for the parameters each event brings back. :func:`regroup` is that step of
``FreezingTrainer.create_optimizer``; :class:`LayerRateLog` the per-group rates it logs with ``layer_lr_decay``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.param_decision import GROUP_EMBEDDINGS
from ..core.plan import FreezePlan
from ..errors import InvalidOptionError
from . import backend

if TYPE_CHECKING:
    from .unfreezing import GradualUnfreezing

logger = logging.getLogger("hf_freeze")

# Prefixes that wrappers (FSDP1, activation checkpointing, torch.compile, DDP) put before parameter names.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_LABELS = ("decay", "no_decay")  # Trainer's two groups, in its order


def plain_name(name: str) -> str:
    """The parameter name as the unwrapped model reports it."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name.removeprefix("module.")


def param_names(model: nn.Module) -> dict[int, str]:
    """``id(param)`` -> plain parameter name."""
    return {id(p): plain_name(n) for n, p in model.named_parameters()}


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


def param_groups(
    plan: FreezePlan,
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    decay_names: Collection[str],
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    *,
    only: Collection[str] | None = None,
    by_layer: bool | None = None,
) -> list[dict[str, Any]]:
    """Named optimizer groups for the plan's trainable parameters (or for ``only``, the names an event adds).

    Without a split by layer the groups are ``Trainer``'s two, ``decay`` and ``no_decay``, both kept even
    when empty (a checkpoint's optimizer state counts them). Split by layer (the default when
    ``layer_decay`` != 1) each plan group gets ``<group>/decay`` and ``<group>/no_decay`` with
    ``lr * layer_scales(...)[group]``, all ``decay`` groups first, each label in model order.

    Example:
        >>> groups = param_groups(plan, model.named_parameters(), decay_names, 1e-3, 0.01, 0.9)  # doctest: +SKIP
        >>> [g["name"] for g in groups][:2]                                                       # doctest: +SKIP
        ['bert.encoder.layer.2/decay', 'bert.encoder.layer.3/decay']
    """
    by_layer = layer_decay != 1.0 if by_layer is None else by_layer
    scales = layer_scales(plan, layer_decay) if by_layer else {}
    decisions = {}
    for p in plan.params:
        decisions[p.name] = p
        decisions.update(dict.fromkeys(p.aliases, p))
    order = {row["group"]: i for i, row in enumerate(plan.groups())}
    wanted = set(only) if only is not None else None
    decay = set(decay_names)
    buckets: dict[tuple[int, int, str], list[nn.Parameter]] = {}
    for raw_name, param in named_parameters:
        name = plain_name(raw_name)
        decision = decisions.get(name)
        selected = name in wanted if wanted is not None else decision is not None and decision.trainable
        if not selected:
            continue
        label = 0 if raw_name in decay or name in decay else 1
        group = decision.group if decision is not None and by_layer else ""
        buckets.setdefault((label, order.get(group, len(order)) if by_layer else 0, group), []).append(param)
    if not by_layer:
        for label in (0, 1):
            buckets.setdefault((label, 0, ""), [])
    return [
        {
            "params": buckets[key],
            "lr": lr * scales.get(key[2], 1.0),
            "weight_decay": weight_decay if key[0] == 0 else 0.0,
            "name": f"{key[2]}/{_LABELS[key[0]]}" if by_layer else _LABELS[key[0]],
        }
        for key in sorted(buckets)
    ]


def is_standard_grouping(optimizer: torch.optim.Optimizer, model: nn.Module, decay_names: Iterable[str]) -> bool:
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


def install(optimizer: torch.optim.Optimizer, groups: Sequence[dict[str, Any]]) -> None:
    """Replace the groups of a just-built optimizer; each keeps the optimizer's other per-group settings
    (betas, eps, ...) from its first group. Must run before the optimizer has state."""
    template = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    optimizer.param_groups = [{**template, **group} for group in groups]


def regroup(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    plan: FreezePlan,
    decay_names: Collection[str],
    args: Any,
    unfreezing: GradualUnfreezing | None = None,
    log: bool = True,
) -> float | None:
    """Give the optimizer ``Trainer.create_optimizer`` just built the plan's groups (:func:`param_groups`).

    ``Trainer`` builds it first so that every optimizer class, factory and keyword it knows keeps working;
    an optimizer that groups parameters its own way is left alone, unless ``layer_lr_decay`` or gradual
    unfreezing needs the groups (then it is an error naming the option). ``unfreezing`` learns how to build
    the groups an event adds and replays a resumed run's stage. Returns the base learning rate when the
    groups are split by layer (for :class:`LayerRateLog`), else None.
    """
    decay = getattr(args, "layer_lr_decay", 1.0)
    if not is_standard_grouping(optimizer, model, decay_names):
        if decay != 1.0 or unfreezing is not None:
            strategy = getattr(args, "unfreeze_strategy", "no")
            option = f"`layer_lr_decay`={decay}" if decay != 1.0 else f"`unfreeze_strategy`={strategy!r}"
            raise InvalidOptionError(
                f"{option} needs Trainer's standard parameter groups, but `optim`={args.optim!r} (or "
                "`optimizer_cls_and_kwargs`) groups parameters its own way. Drop the option with this "
                "optimizer, or use a standard one such as adamw_torch."
            )
        return None
    lr, weight_decay = optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["weight_decay"]
    install(optimizer, param_groups(plan, model.named_parameters(), decay_names, lr, weight_decay, decay))
    if unfreezing is not None:

        def event_groups(plan: FreezePlan, names: list[str]) -> list[dict[str, Any]]:
            return param_groups(
                plan, model.named_parameters(), decay_names, lr, weight_decay, decay, only=names, by_layer=True
            )

        checkpointing = backend.checkpointing_on(args, model)
        unfreezing.attach(model, optimizer, event_groups, checkpointing)  # replays a resumed stage
    if log:
        logger.info("Optimizer groups:\n" + describe(optimizer))
    return lr if decay != 1.0 else None


def logged_rates(
    logged: float, base_lr: float, groups: Sequence[dict[str, Any]], base_lrs: Sequence[float]
) -> tuple[float, dict[str, float]]:
    """With layer-wise rates, the base rate as scheduled and each group's rate, from ``Trainer``'s logged rate.

    ``Trainer`` logs the first group's rate, which under ``layer_lr_decay`` is the embeddings'
    (``decay**(L + 1)`` below the base). ``base_lrs`` are the scheduler's initial rates per group.
    """
    if not base_lrs or not base_lrs[0]:
        return logged, {}
    rate = logged * base_lr / base_lrs[0]
    per_group: dict[str, float] = {}
    for i, group in enumerate(groups):
        name = str(group.get("name", i)).rpartition("/")[0] or str(group.get("name", i))
        # the group's scale times the logged base rate: the same step as `learning_rate`
        per_group.setdefault(name, rate * (base_lrs[i] / base_lr) if i < len(base_lrs) else group["lr"])
    return rate, per_group


class LayerRateLog:
    """Rewrites ``Trainer``'s logs under ``layer_lr_decay``: ``learning_rate`` becomes the base rate as
    scheduled (the head's, not the first group's), and the first training log also gets each group's rate
    (``learning_rate/<group>``)."""

    def __init__(self, base_lr: float) -> None:
        self.base_lr = base_lr
        self.groups_logged = False

    def rewrite(self, logs: dict[str, float], optimizer: torch.optim.Optimizer, lr_scheduler: Any) -> None:
        if "learning_rate" not in logs:
            return
        base_lrs = getattr(lr_scheduler, "base_lrs", None) or []
        rate, per_group = logged_rates(logs["learning_rate"], self.base_lr, optimizer.param_groups, base_lrs)
        logs["learning_rate"] = rate
        if not self.groups_logged:
            self.groups_logged = True
            for name, value in per_group.items():
                logs.setdefault(f"learning_rate/{name}", value)


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


def warn_frozen_in_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Warn when an optimizer passed through ``optimizers=`` holds frozen parameters."""
    frozen = frozen_in_optimizer(optimizer, param_names(model))
    if frozen:
        logger.warning(
            f"The optimizer passed through `optimizers=` holds {len(frozen)} frozen parameter(s) (e.g. "
            f"{frozen[:3]}). They will not train (no gradient), but optimizers with weight decay or "
            "momentum can still change them. Build it from `[p for p in model.parameters() if "
            "p.requires_grad]`, or let FreezingTrainer create it."
        )
