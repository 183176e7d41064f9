"""Find a model's structure without per-model tables: layer stacks, embedding block, head, ties.

- The *base model* is ``model.base_model`` of the innermost ``PreTrainedModel`` (a PEFT wrapper is
  looked through); the *head* is every parameter of that model outside its base model, plus the
  parameters of ``get_output_embeddings()``.
- A *layer stack* is an ``nn.ModuleList`` of blocks of one class under the base model, not nested in
  another stack's block (an ``nn.Sequential`` of blocks when the model has no such ModuleList, as in
  torchvision/timm; ``layer_stack`` may name any ModuleList or Sequential). Where the config states
  layer counts (``num_hidden_layers``, ``n_layer``, ``encoder_layers``, ``len(depths)``, ... also in
  sub-configs), the stacks whose length equals one of
  them are the main ones; otherwise the stack with the most parameters is. A model may have several
  (encoder and decoder; vision tower and language model).
- The *embedding block* is what lies outside the stacks and the head and either sits in a module
  whose name contains ``embed``, is an ``nn.Embedding``, or shares the parent block of
  ``get_input_embeddings()`` (BERT's ``embeddings.LayerNorm``).
- Layers that *share parameters* (ALBERT: 12 layers, 1 group) are detected from the config's layer
  count being a multiple of the stack length.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

_LAYER_COUNT_KEYS = (
    "num_hidden_layers",
    "num_layers",
    "n_layer",
    "n_layers",
    "num_decoder_layers",
    "encoder_layers",
    "decoder_layers",
)


@dataclass(frozen=True)
class LayerStack:
    """One stack of repeated blocks: its module path and how many layers it represents.

    ``num_layers`` may exceed ``num_blocks`` when layers share parameters (ALBERT): virtual layer
    ``i`` then runs block ``i // (num_layers // num_blocks)``.
    """

    path: str
    num_blocks: int
    num_layers: int

    @property
    def shared(self) -> bool:
        return self.num_layers != self.num_blocks

    def block_of_layer(self, layer: int) -> int:
        return layer // (self.num_layers // self.num_blocks)


@dataclass
class ModelStructure:
    """What :func:`discover` found: stacks, base-model prefix, the head and embedding parameters
    (canonical names), and where each module sits (``places``), from which :meth:`location` tells a
    parameter's layer. Per module, not per parameter: a model has far fewer modules than tensors."""

    stacks: list[LayerStack]
    base_prefix: str
    head_names: set[str] = field(default_factory=set)
    embedding_names: set[str] = field(default_factory=set)
    ties: dict[str, list[str]] = field(default_factory=dict)
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    # Module path -> its layer (stack, block index; one tuple per block), "head", "embedding" or None.
    places: dict[str, Place] = field(default_factory=dict)
    # Tied tensors that sit in a layer only under another of their names: canonical name -> that layer.
    tied_locations: dict[str, tuple[LayerStack, int]] = field(default_factory=dict)

    @property
    def aliases(self) -> dict[str, list[str]]:
        """Tied tensors only: canonical name -> all its names, the canonical one first."""
        return {name: [name, *others] for name, others in self.ties.items()}

    def location(self, name: str) -> tuple[LayerStack, int] | None:
        """The layer (stack, block index) of the parameter ``name`` (canonical), or None."""
        place = self.places[name.rpartition(".")[0]]
        return place if type(place) is tuple else self.tied_locations.get(name)


HEAD, EMBEDDING = "head", "embedding"
# What a module (and so each parameter it owns) belongs to: a layer (stack, block index), the head, the
# embedding block, or nothing (None).
Place = tuple[LayerStack, int] | str | None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


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
    ``named_parameters()``; walking ``_modules``/``_parameters`` directly is several times faster than
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


def find_pretrained(model: nn.Module, modules: dict[str, nn.Module] | None = None) -> tuple[str, nn.Module]:
    """The outermost ``PreTrainedModel``-like module and its path.

    Wrappers that forward attribute access (PEFT's ``PeftModel``) are looked through: only a class
    that itself defines ``base_model_prefix`` counts.
    """
    modules = modules if modules is not None else dict(model.named_modules())
    # Ask each class once, not each of (maybe 100k) modules; most models hold a few dozen classes.
    kinds = {kind for kind in set(map(type, modules.values())) if hasattr(kind, "base_model_prefix")}
    if kinds:
        for path, module in modules.items():
            if type(module) in kinds and hasattr(module, "config"):
                return path, module
    return "", model


def model_roots(model: nn.Module, modules: dict[str, nn.Module] | None = None) -> tuple[str, nn.Module, str]:
    """(path of the PreTrainedModel, the PreTrainedModel, path of its base model without task head)."""
    path, pretrained = find_pretrained(model, modules)
    prefix = getattr(pretrained, "base_model_prefix", "") or ""
    if prefix and isinstance(getattr(pretrained, prefix, None), nn.Module):
        return path, pretrained, _join(path, prefix)
    return path, pretrained, path


def _config_layer_counts(config) -> set[int]:
    counts: set[int] = set()
    seen: set[int] = set()

    def visit(cfg) -> None:
        if cfg is None or id(cfg) in seen:
            return
        seen.add(id(cfg))
        for key in _LAYER_COUNT_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                counts.add(value)
        depths = getattr(cfg, "depths", None)
        if isinstance(depths, (list, tuple)) and depths:
            counts.add(len(depths))
        for value in vars(cfg).values() if hasattr(cfg, "__dict__") else ():
            if hasattr(value, "to_dict") and hasattr(value, "model_type"):
                visit(value)

    visit(config)
    return counts


# Indexable containers of blocks. transformers holds its stacks in ModuleLists; torchvision and timm
# often in an nn.Sequential, which discovery falls back to and ``layer_stack`` may always name.
STACK_CONTAINERS: tuple[type[nn.Module], ...] = (nn.ModuleList, nn.Sequential)


def _has_params(module: nn.Module) -> bool:
    """Whether ``module`` holds a parameter; stops at the first one found."""
    return any(p is not None for p in module._parameters.values()) or any(
        _has_params(child) for child in module._modules.values() if child is not None
    )


def _candidate_stacks(
    modules: dict[str, nn.Module], root_path: str, kinds: tuple[type[nn.Module], ...] = (nn.ModuleList,)
) -> list[tuple[str, nn.Module]]:
    """Containers of ``kinds`` under ``root_path`` holding blocks of one class, outermost only (a stack
    inside a block is not listed). Reads the index; walks no module tree."""
    found: list[tuple[str, nn.Module]] = []
    inside = root_path + "." if root_path else ""
    taken = None  # prefix of the last stack found: the index is in tree order, its blocks follow it
    for path, module in modules.items():
        if not isinstance(module, kinds) or not path.startswith(inside) or path == root_path:
            continue
        if taken is not None and path.startswith(taken):
            continue
        if len(module) > 0 and len({type(block) for block in module}) == 1 and _has_params(module):
            found.append((path, module))
            taken = path + "."
    return found


def _num_params(path: str, params: dict[str, nn.Parameter]) -> int:
    prefix = path + "." if path else ""
    return sum(p.numel() for name, p in params.items() if name.startswith(prefix))


def find_layer_stacks(
    model: nn.Module, index: ModelIndex | None = None, roots: tuple[str, nn.Module, str] | None = None
) -> list[LayerStack]:
    """The main layer stacks of ``model`` (see the module docstring); empty when there is none."""
    index = index or walk_model(model)
    _, pretrained, base_path = roots or model_roots(model, index.modules)
    counts = _config_layer_counts(getattr(pretrained, "config", None))
    candidates = _candidate_stacks(index.modules, base_path) or _candidate_stacks(
        index.modules,
        base_path,
        STACK_CONTAINERS,  # no ModuleList: a Sequential of blocks (timm style)
    )
    if not candidates:
        return []
    matching = [(p, m) for p, m in candidates if len(m) in counts]
    if matching:
        return [LayerStack(p, len(m), len(m)) for p, m in matching]
    # Shared layers: the config counts more layers than there are blocks, as a multiple of them.
    shared = [(p, m, c) for p, m in candidates for c in sorted(counts) if c > len(m) and c % len(m) == 0]
    if shared:
        path, module, count = _largest(shared, key=lambda item: _num_params(item[0], index.params))
        return [LayerStack(path, len(module), count)]
    path, module = _largest(candidates, key=lambda item: (_num_params(item[0], index.params), len(item[1])))
    return [LayerStack(path, len(module), len(module))]


def _largest(items: list, key):
    """``max`` that does not compute the (costly) key when there is nothing to compare."""
    return items[0] if len(items) == 1 else max(items, key=key)


def named_stack_candidates(model: nn.Module, modules: dict[str, nn.Module] | None = None) -> list[str]:
    """Every non-empty ModuleList or Sequential path in the model, for ``layer_stack`` hints and explicit naming."""
    seen: set[int] = set()
    found = []
    for path, module in (walk_model(model).modules if modules is None else modules).items():
        if path and isinstance(module, STACK_CONTAINERS) and len(module) and id(module) not in seen:
            seen.add(id(module))
            found.append(path)
    return found


def stack_from_path(model: nn.Module, path: str, modules: dict[str, nn.Module] | None = None) -> LayerStack:
    module = modules[path] if modules is not None else model.get_submodule(path)
    return LayerStack(path, len(module), len(module))


def discover(
    model: nn.Module, stacks: list[LayerStack] | None = None, index: ModelIndex | None = None
) -> ModelStructure:
    """Analyse ``model`` from one walk (``index``, made here if not given); the plan reads the result."""
    index = index or walk_model(model)
    modules, params, ties = index
    pretrained_path, pretrained, base_path = roots = model_roots(model, modules)
    stacks = find_layer_stacks(model, index, roots) if stacks is None else stacks
    structure = ModelStructure(stacks=stacks, base_prefix=base_path, ties=ties, params=params, modules=modules)

    # The few modules where membership changes; every other module inherits its parent's (the index is
    # in tree order, so a parent is always placed before its children). The head outranks a layer, a
    # layer outranks the embedding block.
    roots: dict[str, Place] = {}
    if base_path != pretrained_path:  # the head: the PreTrainedModel outside its base model
        roots[pretrained_path] = HEAD
        roots[base_path] = None
    for stack in stacks:
        for key in modules[stack.path]._modules if stack.path in modules else ():
            if key.isdigit():
                roots.setdefault(_join(stack.path, key), (stack, int(key)))
    output, input_layer = _getter(pretrained, "get_output_embeddings"), _getter(pretrained, "get_input_embeddings")
    output_paths, input_paths = _paths_of(modules, output), _paths_of(modules, input_layer)
    if input_paths:
        parent = input_paths[0].rpartition(".")[0]
        # Only a dedicated block (BertEmbeddings), never a module that also holds the layers.
        if (
            parent
            and parent not in (base_path, pretrained_path)
            and not any(s.path == parent or s.path.startswith(parent + ".") for s in stacks)
        ):
            roots.setdefault(parent, EMBEDDING)
    roots.update((path, HEAD) for path in output_paths)

    # One pass in tree order (a parent is placed before its children). Per module, not per parameter: a
    # layer's parameters need no record (``location`` reads ``places``); the head's and the embedding
    # block's names are collected from their modules, each name mapped to its canonical one.
    where: dict[str, Place] = {}
    structure.places = where
    canonical = index.names() if ties else None
    head, embeddings, tied = structure.head_names, structure.embedding_names, structure.tied_locations
    missing = object()
    for path, module in modules.items():
        parent = where[path.rpartition(".")[0]] if path else None
        root = roots.get(path, missing)
        if root is missing:
            place = parent
        elif root is HEAD:
            place = root
        elif root is None:  # the base model, where the head region ends
            place = EMBEDDING if "embed" in path.lower() else None
        elif root is EMBEDDING:
            place = parent if parent is not None else EMBEDDING
        else:
            place = HEAD if parent is HEAD else root
        if place is None and "embed" in path.rpartition(".")[2].lower():
            place = EMBEDDING
        where[path] = place
        if type(place) is tuple and canonical is None:
            continue
        own = module._parameters
        if not own:
            continue
        prefix = path + "." if path else ""
        for leaf, param in own.items():
            if param is None:
                continue
            name = prefix + leaf if canonical is None else canonical[prefix + leaf]
            if type(place) is tuple:  # an alias in a layer places its tensor there, unless its own name did
                if type(where[name.rpartition(".")[0]]) is not tuple:
                    tied.setdefault(name, place)
            elif place is HEAD:
                head.add(name)
            elif place is EMBEDDING or "embed" in leaf.lower() or isinstance(module, nn.Embedding):
                embeddings.add(name)
    return structure


def _paths_of(modules: dict[str, nn.Module], target: nn.Module | None) -> list[str]:
    return [] if target is None else [path for path, module in modules.items() if module is target]


def _getter(pretrained: nn.Module, method: str) -> nn.Module | None:
    getter = getattr(pretrained, method, None)
    try:
        found = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        found = None
    return found if isinstance(found, nn.Module) else None
