"""One-call convenience over the core."""

from __future__ import annotations

from typing import Any

from torch import nn

from .plan import FreezePlan
from .spec import FreezeSpec


def freeze_model(model: nn.Module, **options: Any) -> FreezePlan:
    """Resolve the options of :class:`FreezeSpec` against ``model``, apply them, return the plan.

    >>> plan = freeze_model(model, freeze_embeddings=True, freeze_layers=":8")  # doctest: +SKIP
    >>> print(plan.summary())                                                   # doctest: +SKIP
    """
    plan = FreezeSpec(**options).resolve(model)
    plan.apply(model)
    return plan
