"""Keep the running statistics of frozen normalization layers fixed while the model trains.

``Trainer`` calls ``model.train()`` every step, which puts BatchNorm back into training mode and
lets its running mean/var drift even though its weights are frozen. A forward pre-hook puts each
frozen norm layer back into eval mode right before it runs, whatever ``train()`` did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

if TYPE_CHECKING:
    from .model_index import ModelIndex

_HANDLE = "_hf_freeze_norm_stats_handle"


def has_running_stats(module: nn.Module) -> bool:
    """BatchNorm*/SyncBatchNorm/InstanceNorm* that track running statistics."""
    return isinstance(module, _NormBase) and bool(module.track_running_stats)


def running_stats_modules(index: ModelIndex) -> dict[str, nn.Module]:
    """The modules of a walk's ``index`` that :func:`has_running_stats`, by path."""
    return {path: module for path, module in index.modules_of(_NormBase) if module.track_running_stats}


def _stay_in_eval(module: nn.Module, args) -> None:
    module.training = False


def freeze_norm_statistics(model: nn.Module, names: Iterable[str], index: ModelIndex) -> None:
    """Hook exactly the norm modules named in ``names``; release every other one hooked before.

    ``index`` is the caller's walk of ``model`` (:func:`~hf_freeze.core.model_index.walk_model`).
    """
    wanted = set(names)
    for name, module in running_stats_modules(index).items():
        handle = module.__dict__.get(_HANDLE)
        if name in wanted and handle is None:
            module.__dict__[_HANDLE] = module.register_forward_pre_hook(_stay_in_eval)
        elif name not in wanted and handle is not None:
            handle.remove()
            del module.__dict__[_HANDLE]
            module.training = model.training


def frozen_norms(norms: Iterable[str], names: Mapping[str, str], trainable: Mapping[str, bool]) -> list[str]:
    """The norm modules (of ``norms``, module paths) whose statistics stay fixed: those whose
    parameters are all frozen. The one ownership rule: a norm's parameters are its own, or, for a
    norm without parameters of its own (``affine=False``), every parameter of its parent module.

    ``names`` maps each parameter name, tied aliases included, to its canonical name; ``trainable``
    maps canonical names to their flag. Works on names only, so a saved plan can be re-checked.
    """
    norms = list(norms)
    if not norms:
        return []
    wanted = set(norms)
    own: dict[str, list[str]] = {}
    for name, canonical in names.items():
        owner = name.rpartition(".")[0]
        if owner in wanted:
            own.setdefault(owner, []).append(canonical)
    result = []
    for norm in norms:
        deciding = own.get(norm)
        if deciding is None:
            parent = norm.rpartition(".")[0]
            prefix = parent + "." if parent else ""
            deciding = [canonical for name, canonical in names.items() if name.startswith(prefix)]
        known = [n for n in deciding if n in trainable]
        if known and not any(trainable[n] for n in known):
            result.append(norm)
    return result
