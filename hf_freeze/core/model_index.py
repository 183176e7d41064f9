"""The one walk over a model's module tree, and what it finds.

Resolving a plan walks the tree once and applying it once more; everything else reads the
:class:`ModelIndex` that walk returns. Models with 100k parameter tensors exist, so the walk reads
``_modules``/``_parameters`` directly and fills plain lists (dicts are built only for a reader that
looks names up), and :func:`paused_gc` keeps the cyclic GC from rescanning the model while records
are built.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


class ModelIndex:
    """What one walk of the module tree finds, in tree order: each module under its path, each parameter
    tensor under its canonical (first) name, and, for tied tensors only, canonical name -> its other
    names (in ``named_parameters`` order).

    The same content is offered as lists (``module_paths``/``module_objects``, ``param_names``/
    ``param_tensors``) and as dicts (``modules``, ``params``); each form is made from the other on first
    use, since applying a plan needs only the lists. Unpacks as ``modules, params, ties``.
    """

    __slots__ = ("_module_lists", "_param_lists", "_modules", "_params", "_types", "ties")

    def __init__(
        self, modules: dict[str, nn.Module], params: dict[str, nn.Parameter], ties: dict[str, list[str]]
    ) -> None:
        self._modules, self._params, self.ties = modules, params, ties
        self._module_lists = self._param_lists = self._types = None

    @classmethod
    def from_lists(
        cls,
        module_lists: tuple[list[str], list[nn.Module]],
        param_lists: tuple[list[str], list[nn.Parameter]],
        ties: dict[str, list[str]],
    ) -> ModelIndex:
        index = cls.__new__(cls)
        index._module_lists, index._param_lists, index.ties = module_lists, param_lists, ties
        index._modules = index._params = index._types = None
        return index

    @property
    def modules(self) -> dict[str, nn.Module]:
        if self._modules is None:
            self._modules = dict(zip(*self._module_lists))
        return self._modules

    @property
    def params(self) -> dict[str, nn.Parameter]:
        if self._params is None:
            self._params = dict(zip(*self._param_lists))
        return self._params

    @property
    def module_paths(self) -> list[str]:
        return self._lists("_module_lists", self._modules)[0]

    @property
    def module_objects(self) -> list[nn.Module]:
        return self._lists("_module_lists", self._modules)[1]

    @property
    def param_names(self) -> list[str]:
        return self._lists("_param_lists", self._params)[0]

    @property
    def param_tensors(self) -> list[nn.Parameter]:
        return self._lists("_param_lists", self._params)[1]

    @property
    def module_types(self) -> list[type]:
        """The class of each module (in the order of ``module_objects``)."""
        if self._types is None:
            self._types = list(map(type, self.module_objects))
        return self._types

    def modules_of(self, kinds: type | tuple[type, ...]) -> list[tuple[str, nn.Module]]:
        """``(path, module)`` of the modules that are instances of ``kinds``, in tree order. A model holds
        a few dozen classes: each is asked once, and ``list.index`` finds their modules without a Python
        step per module."""
        types = self.module_types
        found: list[int] = []
        for kind in {kind for kind in set(types) if issubclass(kind, kinds)}:
            position = types.index(kind)
            while True:
                found.append(position)
                try:
                    position = types.index(kind, position + 1)
                except ValueError:
                    break
        paths, objects = self.module_paths, self.module_objects
        return [(paths[i], objects[i]) for i in sorted(found)]

    def _lists(self, slot: str, mapping: dict) -> tuple[list, list]:
        lists = getattr(self, slot)
        if lists is None:
            lists = (list(mapping), list(mapping.values()))
            setattr(self, slot, lists)
        return lists

    def __iter__(self) -> Iterator:
        return iter((self.modules, self.params, self.ties))

    def names(self) -> dict[str, str]:
        """Every parameter name, tied aliases included, -> its canonical name."""
        names = dict(zip(self.param_names, self.param_names))
        for canonical, others in self.ties.items():
            names.update((other, canonical) for other in others)
        return names


def walk_model(model: nn.Module) -> ModelIndex:
    """The one walk over the module tree that resolving (and applying) a plan makes.

    Orders and canonical names are those of ``named_modules(remove_duplicate=False)`` and
    ``named_parameters()``; walking ``_modules``/``_parameters`` directly into lists is more than twice
    as fast as torch's generators, which matters for models with 100k parameter tensors.
    """
    paths: list[str] = []
    objects: list[nn.Module] = []
    names: list[str] = []
    tensors: list[nn.Parameter] = []
    add_path, add_object, add_name, add_tensor = paths.append, objects.append, names.append, tensors.append

    def visit(path: str, module: nn.Module) -> None:
        add_path(path)
        add_object(module)
        prefix = path + "." if path else ""
        for name, param in module._parameters.items():
            if param is not None:
                add_name(prefix + name)
                add_tensor(param)
        for name, child in module._modules.items():
            if child is None:
                continue
            if child._modules:
                visit(prefix + name, child)
                continue
            child_path = prefix + name  # a leaf (most modules): visited here, without a call
            add_path(child_path)
            add_object(child)
            for leaf, param in child._parameters.items():
                if param is not None:
                    add_name(child_path + "." + leaf)
                    add_tensor(param)

    visit("", model)
    ties: dict[str, list[str]] = {}
    if len(set(map(id, tensors))) != len(tensors):  # a tensor under several names: keep the first
        first_name: dict[int, str] = {}
        unique_names: list[str] = []
        unique_tensors: list[nn.Parameter] = []
        for name, param in zip(names, tensors):
            first = first_name.setdefault(id(param), name)
            if first is name:
                unique_names.append(name)
                unique_tensors.append(param)
            else:
                ties.setdefault(first, []).append(name)
        names, tensors = unique_names, unique_tensors
    return ModelIndex.from_lists((paths, objects), (names, tensors), ties)


def param_tensors(model: nn.Module) -> list[nn.Parameter]:
    """The parameter tensors of ``model`` in :func:`walk_model`'s order (ties once), without their names:
    what applying a plan to the model it was resolved from needs."""
    tensors: list[nn.Parameter] = []
    add = tensors.append

    def visit(module: nn.Module) -> None:
        for param in module._parameters.values():
            if param is not None:
                add(param)
        for child in module._modules.values():
            if child is None:
                continue
            if child._modules:
                visit(child)
                continue
            for param in child._parameters.values():
                if param is not None:
                    add(param)

    visit(model)
    if len(set(map(id, tensors))) != len(tensors):
        tensors = list({id(param): param for param in tensors}.values())  # first occurrence, in order
    return tensors


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
