"""The one walk over a model's module tree, and what it finds.

Resolving a plan walks the tree once and applying it once more; everything else reads the
:class:`ModelIndex` that walk returns. Models with 100k parameter tensors exist, so the walk reads
``_modules``/``_parameters`` directly, and :func:`paused_gc` keeps the cyclic GC from rescanning the
model while records are built.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from torch import nn


class ModelIndex(NamedTuple):
    """What one walk of the module tree finds: module path -> module, canonical name -> parameter, and,
    for tied tensors only, canonical name -> its other names (in ``named_parameters`` order)."""

    modules: dict[str, nn.Module]
    params: dict[str, nn.Parameter]
    ties: dict[str, list[str]]

    def names(self) -> dict[str, str]:
        """Every parameter name, tied aliases included, -> its canonical name."""
        names = dict(zip(self.params, self.params))
        for canonical, others in self.ties.items():
            names.update((other, canonical) for other in others)
        return names


def walk_model(model: nn.Module) -> ModelIndex:
    """The one walk over the module tree that resolving (and applying) a plan makes.

    Orders and canonical names are those of ``named_modules(remove_duplicate=False)`` and
    ``named_parameters()``; walking ``_modules``/``_parameters`` directly is about twice as fast as
    torch's generators, which matters for models with 100k parameter tensors.
    """
    modules: dict[str, nn.Module] = {}
    params: dict[str, nn.Parameter] = {}

    def visit(path: str, module: nn.Module) -> None:
        modules[path] = module
        prefix = path + "." if path else ""
        for name, param in module._parameters.items():
            if param is not None:
                params[prefix + name] = param
        for name, child in module._modules.items():
            if child is None:
                continue
            if child._modules:
                visit(prefix + name, child)
                continue
            child_path = prefix + name  # a leaf (most modules): visited here, without a call
            modules[child_path] = child
            for leaf, param in child._parameters.items():
                if param is not None:
                    params[child_path + "." + leaf] = param

    visit("", model)
    ties: dict[str, list[str]] = {}
    if len(set(map(id, params.values()))) != len(params):  # a tensor under several names: keep the first
        first_name: dict[int, str] = {}
        unique: dict[str, nn.Parameter] = {}
        for name, param in params.items():
            first = first_name.setdefault(id(param), name)
            if first is name:
                unique[name] = param
            else:
                ties.setdefault(first, []).append(name)
        params = unique
    return ModelIndex(modules, params, ties)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic GC: records for 100k tensors make it rescan the whole model graph again and
    again (half the time of a resolve), and none of what they allocate is garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
