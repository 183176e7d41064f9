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

from collections.abc import Iterator
from dataclasses import dataclass, field

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
    """What :func:`discover` found: stacks, base-model and head prefixes, embedding and head names."""

    stacks: list[LayerStack]
    base_prefix: str
    head_names: set[str] = field(default_factory=set)
    embedding_names: set[str] = field(default_factory=set)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    locations: dict[str, tuple[LayerStack, int]] = field(default_factory=dict)

    def locate(self, name: str) -> tuple[LayerStack, int] | None:
        """The stack and block index a parameter name lives in, or None."""
        for stack in self.stacks:
            prefix = stack.path + "." if stack.path else ""
            if name.startswith(prefix):
                head, _, _ = name[len(prefix) :].partition(".")
                if head.isdigit():
                    return stack, int(head)
        return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def index_model(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, nn.Parameter], dict[str, list[str]]]:
    """One walk over the module tree: (module path -> module, canonical name -> parameter,
    canonical name -> every name of that tensor).

    Orders and canonical names are those of ``named_modules(remove_duplicate=False)`` and
    ``named_parameters()``; walking ``_modules``/``_parameters`` directly is several times faster than
    torch's generators, which matters for models with 100k parameter tensors.
    """
    modules: dict[str, nn.Module] = {}
    params: dict[str, nn.Parameter] = {}
    aliases: dict[str, list[str]] = {}
    first_name: dict[int, str] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        modules.setdefault(prefix.rstrip("."), module)
        for name, param in module._parameters.items():
            if param is not None:
                full = prefix + name
                first = first_name.setdefault(id(param), full)
                if first is full:
                    params[full] = param
                    aliases[full] = [full]
                else:
                    aliases[first].append(full)
        for name, child in module._modules.items():
            if child is not None:
                visit(f"{prefix}{name}.", child)

    visit("", model)
    return modules, params, aliases


def find_pretrained(model: nn.Module, modules: dict[str, nn.Module] | None = None) -> tuple[str, nn.Module]:
    """The outermost ``PreTrainedModel``-like module and its path.

    Wrappers that forward attribute access (PEFT's ``PeftModel``) are looked through: only a class
    that itself defines ``base_model_prefix`` counts.
    """
    items = modules.items() if modules is not None else model.named_modules()
    for path, module in items:
        if hasattr(type(module), "base_model_prefix") and hasattr(module, "config"):
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


def _candidate_stacks(
    root: nn.Module, root_path: str, kinds: tuple[type[nn.Module], ...] = (nn.ModuleList,)
) -> Iterator[tuple[str, nn.Module]]:
    """Containers of ``kinds`` holding blocks of one class, outermost only (a stack inside a block is not listed)."""

    def walk(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
        for name, child in module.named_children():
            child_path = _join(path, name)
            if (
                isinstance(child, kinds)
                and len(child) > 0
                and len({type(block) for block in child}) == 1
                and any(True for _ in child.parameters())
            ):
                yield child_path, child
            else:
                yield from walk(child, child_path)

    yield from walk(root, root_path)


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def find_layer_stacks(model: nn.Module, roots: tuple[str, nn.Module, str] | None = None) -> list[LayerStack]:
    """The main layer stacks of ``model`` (see the module docstring); empty when there is none."""
    _, pretrained, base_path = roots or model_roots(model)
    base = model.get_submodule(base_path) if base_path else model
    counts = _config_layer_counts(getattr(pretrained, "config", None))
    candidates = list(_candidate_stacks(base, base_path)) or list(
        _candidate_stacks(base, base_path, STACK_CONTAINERS)  # no ModuleList: a Sequential of blocks (timm style)
    )
    if not candidates:
        return []
    matching = [(p, m) for p, m in candidates if len(m) in counts]
    if matching:
        return [LayerStack(p, len(m), len(m)) for p, m in matching]
    # Shared layers: the config counts more layers than there are blocks, as a multiple of them.
    shared = [(p, m, c) for p, m in candidates for c in sorted(counts) if c > len(m) and c % len(m) == 0]
    if shared:
        path, module, count = _largest(shared, key=lambda item: _num_params(item[1]))
        return [LayerStack(path, len(module), count)]
    path, module = _largest(candidates, key=lambda item: (_num_params(item[1]), len(item[1])))
    return [LayerStack(path, len(module), len(module))]


def _largest(items: list, key):
    """``max`` that does not compute the (costly) key when there is nothing to compare."""
    return items[0] if len(items) == 1 else max(items, key=key)


def named_stack_candidates(model: nn.Module) -> list[str]:
    """Every non-empty ModuleList or Sequential path in the model, for ``layer_stack`` hints and explicit naming."""
    return [
        path
        for path, module in model.named_modules()
        if path and isinstance(module, STACK_CONTAINERS) and len(module)
    ]


def stack_from_path(model: nn.Module, path: str) -> LayerStack:
    module = model.get_submodule(path)
    return LayerStack(path, len(module), len(module))


def _owner(name: str) -> str:
    return name.rpartition(".")[0]


def discover(model: nn.Module, stacks: list[LayerStack] | None = None) -> ModelStructure:
    """Analyse ``model`` once; the plan reads everything it needs from the result."""
    modules, params, aliases = index_model(model)
    roots = model_roots(model, modules)
    pretrained_path, pretrained, base_path = roots
    stacks = find_layer_stacks(model, roots) if stacks is None else stacks
    structure = ModelStructure(stacks=stacks, base_prefix=base_path, aliases=aliases, params=params, modules=modules)

    def under(name: str, prefix: str) -> bool:
        return not prefix or name == prefix or name.startswith(prefix + ".")

    def paths_of(method: str) -> list[str]:
        getter = getattr(pretrained, method, None)
        try:
            found = getter() if callable(getter) else None
        except (NotImplementedError, AttributeError):
            found = None
        return [p for p, m in modules.items() if m is found] if isinstance(found, nn.Module) else []

    output_prefixes = paths_of("get_output_embeddings")
    input_parent = None
    input_paths = paths_of("get_input_embeddings")
    if input_paths:
        parent = _owner(input_paths[0])
        # Only a dedicated block (BertEmbeddings), never a module that also holds the layers.
        if parent and parent not in (base_path, pretrained_path) and not any(under(s.path, parent) for s in stacks):
            input_parent = parent
    has_head = base_path != pretrained_path

    # Classify per owning module (tensors of one module share the answer), then per tensor.
    owner_class: dict[str, tuple[tuple[LayerStack, int] | None, bool, bool]] = {}

    def classify(owner: str) -> tuple[tuple[LayerStack, int] | None, bool, bool]:
        if owner not in owner_class:
            in_head = (has_head and under(owner, pretrained_path) and not under(owner, base_path)) or any(
                under(owner, p) for p in output_prefixes
            )
            location = None if in_head else structure.locate(owner + ".")
            embedding = (
                not in_head
                and location is None
                and (
                    "embed" in owner.lower()
                    or isinstance(modules.get(owner), nn.Embedding)
                    or (input_parent is not None and under(owner, input_parent))
                )
            )
            owner_class[owner] = (location, in_head, embedding)
        return owner_class[owner]

    for name, all_names in aliases.items():
        for alias in all_names:
            owner, _, leaf = alias.rpartition(".")
            location, in_head, embedding = classify(owner)
            if in_head:
                structure.head_names.add(name)
            elif location is not None:
                structure.locations.setdefault(name, location)
            elif embedding or "embed" in leaf.lower():
                structure.embedding_names.add(name)
    return structure
