"""What a partial checkpoint stores and what it fingerprints, for a model and its plan.

Stored: the trainable parameters (a tied tensor once, under its canonical name) and the buffers that
change in training (running statistics of norm layers the plan does not freeze). Fingerprinted: every
other parameter and persistent buffer. Both lists are derived here once so that saving, loading and
the trainer agree on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .fingerprint import Fingerprint, fingerprint_tensors
from .model_index import walk_model
from .norm_stats import has_running_stats
from .plan import FreezePlan


@dataclass
class ModelState:
    """A model's tensors by canonical name (each tensor once), and every alias name of each."""

    params: dict[str, nn.Parameter]
    buffers: dict[str, torch.Tensor]
    trained_buffers: list[str]
    lookup: dict[str, str]  # any name (alias included) -> canonical name

    def tensor(self, name: str) -> torch.Tensor:
        canonical = self.lookup[name]
        return self.params.get(canonical, self.buffers.get(canonical))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel/DataParallel wrappers, whose names the plan uses."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def model_state(model: nn.Module, frozen_norms: Iterable[str] = ()) -> ModelState:
    modules, params, ties = walk_model(model)
    lookup = {name: name for name in params} | {alias: name for name, names in ties.items() for alias in names}
    buffers: dict[str, torch.Tensor] = {}
    first: dict[int, str] = {}
    trained: list[str] = []
    fixed = set(frozen_norms)
    for path, module in modules.items():
        for short, buffer in module._buffers.items():
            if buffer is None or short in module._non_persistent_buffers_set:
                continue
            name = f"{path}.{short}" if path else short
            canonical = first.setdefault(id(buffer), name)
            lookup[name] = canonical
            if canonical == name:
                buffers[name] = buffer
                if has_running_stats(module) and path not in fixed:
                    trained.append(name)
    return ModelState(params, buffers, trained, lookup)


def frozen_names(state: ModelState, plan: FreezePlan) -> list[str]:
    trained = set(state.trained_buffers)
    return plan.frozen_names + [name for name in state.buffers if name not in trained]


def frozen_tensor_names(model: nn.Module, plan: FreezePlan) -> list[str]:
    """What a partial checkpoint of ``model`` under ``plan`` leaves out, so what the fingerprint covers:
    the frozen parameters and every persistent buffer that does not change in training."""
    return frozen_names(model_state(model, plan.frozen_norms), plan)


def fingerprint_frozen(model: nn.Module, plan: FreezePlan) -> Fingerprint:
    """The fingerprint of what ``plan`` freezes in ``model``; compute it once per run and pass it to
    every :func:`save_trainable_state` (the frozen weights do not change while training)."""
    state = model_state(model, plan.frozen_norms)
    return fingerprint_tensors((name, state.tensor(name)) for name in frozen_names(state, plan))
