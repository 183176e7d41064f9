"""Find a model's structure without per-model tables: head, embedding block, layers, ties.

- The *base model* is ``model.base_model`` of the innermost ``PreTrainedModel`` (a PEFT wrapper is
  looked through); the *head* is every parameter of that model outside its base model, plus the
  parameters of ``get_output_embeddings()``.
- The *layers* are the blocks of the layer stacks (:mod:`~hf_freeze.core.layer_stacks` finds them).
- The *embedding block* is what lies outside the stacks and the head and either sits in a module
  whose name contains ``embed``, is an ``nn.Embedding``, or shares the parent block of
  ``get_input_embeddings()`` (BERT's ``embeddings.LayerNorm``).
- *Tied* tensors (one tensor under several names) come from the walk
  (:func:`~hf_freeze.core.model_index.walk_model`); a tensor belongs wherever any of its names does.

Membership is worked out per module, not per parameter: a model has far fewer modules than tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice, repeat

from torch import nn

from .layer_stacks import LayerStack, find_layer_stacks
from .model_index import ModelIndex, walk_model


@dataclass
class ModelStructure:
    """What :func:`discover` found: stacks, base-model prefix, the walk it read (``index``), the head's
    parameters and the embedding block's names (canonical names), and where each module sits
    (``places``), from which :meth:`location` tells a parameter's layer."""

    stacks: list[LayerStack]
    base_prefix: str
    index: ModelIndex
    head_params: dict[str, nn.Parameter] = field(default_factory=dict)
    embedding_names: set[str] = field(default_factory=set)
    # Module path -> its layer (stack, block index; one tuple per block), "head", "embedding" or None.
    places: dict[str, Place] = field(default_factory=dict)
    # Tied tensors that sit in a layer only under another of their names: canonical name -> that layer.
    tied_locations: dict[str, tuple[LayerStack, int]] = field(default_factory=dict)

    @property
    def head_names(self) -> set[str]:
        return set(self.head_params)

    @property
    def ties(self) -> dict[str, list[str]]:
        return self.index.ties

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


def find_pretrained(model: nn.Module, index: ModelIndex) -> tuple[str, nn.Module]:
    """The outermost ``PreTrainedModel``-like module and its path.

    Wrappers that forward attribute access (PEFT's ``PeftModel``) are looked through: only a class
    that itself defines ``base_model_prefix`` counts.
    """
    kinds = {kind for kind in set(index.module_types) if hasattr(kind, "base_model_prefix")}
    if kinds:
        for path, module in zip(index.module_paths, index.module_objects):
            if type(module) in kinds and hasattr(module, "config"):
                return path, module
    return "", model


def model_roots(model: nn.Module, index: ModelIndex) -> tuple[str, nn.Module, str]:
    """(path of the PreTrainedModel, the PreTrainedModel, path of its base model without task head)."""
    path, pretrained = find_pretrained(model, index)
    prefix = getattr(pretrained, "base_model_prefix", "") or ""
    if prefix and isinstance(getattr(pretrained, prefix, None), nn.Module):
        return path, pretrained, _join(path, prefix)
    return path, pretrained, path


def discover(
    model: nn.Module, stacks: list[LayerStack] | None = None, index: ModelIndex | None = None
) -> ModelStructure:
    """Analyse ``model`` from one walk (``index``, made here if not given); the plan reads the result."""
    index = index or walk_model(model)
    paths, objects, ties = index.module_paths, index.module_objects, index.ties
    pretrained_path, pretrained, base_path = model_roots(model, index)
    stacks = find_layer_stacks(index, getattr(pretrained, "config", None), base_path) if stacks is None else stacks
    structure = ModelStructure(stacks=stacks, base_prefix=base_path, index=index)

    # The few modules where membership changes; every other module inherits its parent's (the index is
    # in tree order, so a parent is always placed before its children). The head outranks a layer, a
    # layer outranks the embedding block.
    roots: dict[str, Place] = {}
    if base_path != pretrained_path:  # the head: the PreTrainedModel outside its base model
        roots[pretrained_path] = HEAD
        roots[base_path] = None
    for stack in stacks:
        container = _module_at(index, stack.path)
        for key in container._modules if container is not None else ():
            if key.isdigit():
                roots.setdefault(_join(stack.path, key), (stack, int(key)))
    output, input_layer = _getter(pretrained, "get_output_embeddings"), _getter(pretrained, "get_input_embeddings")
    output_paths, input_paths = _paths_of(index, output), _paths_of(index, input_layer)
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
    head, embeddings, tied = structure.head_params, structure.embedding_names, structure.tied_locations
    interiors = _block_interiors(paths, roots) if canonical is None else {}
    missing = object()
    modules = zip(paths, objects)
    for path, module in modules:
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
            span = interiors.get(path) if root is not missing else None
            if span is not None:  # a layer block: every module inside it takes its place, in one step
                start, end = span
                where.update(zip(paths[start:end], repeat(place)))
                next(islice(modules, end - start, end - start), None)
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
                head[name] = param
            elif place is EMBEDDING or "embed" in leaf.lower() or isinstance(module, nn.Embedding):
                embeddings.add(name)
    return structure


def _block_interiors(paths: list[str], roots: dict[str, Place]) -> dict[str, tuple[int, int]]:
    """Layer blocks whose modules fill the walk's order up to the next block, with no other root among
    them: block path -> (start, end) positions of the modules inside it. A stack holds its blocks in
    order, so the next block's position ends the run; the checks run in C, not per module in Python."""
    blocks = [path for path, place in roots.items() if type(place) is tuple]
    interiors: dict[str, tuple[int, int]] = {}
    position = -1
    for block, following in zip(blocks, blocks[1:]):
        try:
            position = paths.index(block, position + 1)
            end = paths.index(following, position + 1)
        except ValueError:
            break
        inside = paths[position + 1 : end]
        if roots.keys().isdisjoint(inside) and all(map(str.startswith, inside, repeat(block + "."))):
            interiors[block] = (position + 1, end)
    return interiors


def _module_at(index: ModelIndex, path: str) -> nn.Module | None:
    """The module at ``path``, or None; a scan of the path list (for a few paths, cheaper than a dict)."""
    try:
        return index.module_objects[index.module_paths.index(path)]
    except ValueError:
        return None


def _paths_of(index: ModelIndex, target: nn.Module | None) -> list[str]:
    if target is None:
        return []
    return [path for path, module in zip(index.module_paths, index.module_objects) if module is target]


def _getter(pretrained: nn.Module, method: str) -> nn.Module | None:
    getter = getattr(pretrained, method, None)
    try:
        found = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        found = None
    return found if isinstance(found, nn.Module) else None
