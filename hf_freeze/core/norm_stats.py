"""Keep the running statistics of frozen normalization layers fixed while the model trains.

``Trainer`` calls ``model.train()`` every step, which puts BatchNorm back into training mode and
lets its running mean/var drift even though its weights are frozen. A forward pre-hook puts each
frozen norm layer back into eval mode right before it runs, whatever ``train()`` did.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

_HANDLE = "_hf_freeze_norm_stats_handle"


def has_running_stats(module: nn.Module) -> bool:
    """BatchNorm*/SyncBatchNorm/InstanceNorm* that track running statistics."""
    return isinstance(module, _NormBase) and bool(module.track_running_stats)


def _stay_in_eval(module: nn.Module, args) -> None:
    module.training = False


def freeze_norm_statistics(model: nn.Module, names: Iterable[str], modules: dict[str, nn.Module]) -> None:
    """Hook exactly the norm modules named in ``names``; release every other one hooked before.

    ``modules`` maps module paths to modules (``discovery.index_model``), walked once by the caller.
    """
    wanted = set(names)
    for name, module in modules.items():
        if not has_running_stats(module):
            continue
        handle = module.__dict__.get(_HANDLE)
        if name in wanted and handle is None:
            module.__dict__[_HANDLE] = module.register_forward_pre_hook(_stay_in_eval)
        elif name not in wanted and handle is not None:
            handle.remove()
            del module.__dict__[_HANDLE]
            module.training = model.training


def frozen_norm_modules(modules: dict[str, nn.Module], trainable: dict[str, bool]) -> list[str]:
    """Norm modules with running stats whose parameters are all frozen (or, without parameters of
    their own, whose parent's parameters are all frozen)."""
    result = []
    for name, module in modules.items():
        if not has_running_stats(module):
            continue
        own = [f"{name}.{n}" if name else n for n, _ in module.named_parameters(recurse=False)]
        if not own:
            parent = name.rpartition(".")[0]
            owner = modules[parent]
            own = [f"{parent}.{n}" if parent else n for n, _ in owner.named_parameters()]
        known = [n for n in own if n in trainable]
        if known and not any(trainable[n] for n in known):
            result.append(name)
    return result
