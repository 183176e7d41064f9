"""One-call convenience over the core."""

from __future__ import annotations

from typing import Any

from torch import nn

from .model_index import walk_model
from .norm_stats import freeze_norm_statistics
from .plan import APPLIED_PLAN, FreezePlan
from .rules import Rule
from .spec import FreezeSpec


def freeze_model(model: nn.Module, **options: Any) -> FreezePlan:
    """Resolve the options of :class:`FreezeSpec` against ``model``, apply them, return the plan.

    >>> plan = freeze_model(model, freeze_embeddings=True, freeze_layers=":8")  # doctest: +SKIP
    >>> print(plan.summary())                                                   # doctest: +SKIP
    """
    plan = FreezeSpec(**options).resolve(model)
    plan.apply(model)
    return plan


def release_applied_plan(model: nn.Module) -> list[str]:
    """Make trainable again what the last plan applied to ``model`` froze by its own rules (and let its frozen
    norm layers' statistics run again); return the names of the parameters released.

    Why: a plan treats a parameter that arrives frozen as frozen by the user (a PEFT base weight) and never
    unfreezes it, except by an ``unfreeze`` pattern. A model that hf-freeze itself froze earlier (a model
    object reused by a second ``FreezingTrainer``, e.g. in a notebook) would otherwise lose those layers
    from gradual unfreezing. What arrived frozen at that earlier plan stays frozen.
    """
    plan = model.__dict__.pop(APPLIED_PLAN, None)
    if plan is None:
        return []
    params = dict(model.named_parameters())
    released = [
        p.name for p in plan.params if not p.trainable and p.rule.kind is not Rule.REQUIRES_GRAD and p.name in params
    ]
    for name in released:
        params[name].requires_grad_(True)
    if plan.frozen_norms:  # their statistics run free again, as before the plan
        freeze_norm_statistics(model, [], walk_model(model))
    return released
