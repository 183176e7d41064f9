"""Find a model's layer stacks: the repeated blocks that ``freeze_layers`` counts.

A *layer stack* is an ``nn.ModuleList`` of blocks of one class under the base model, not nested in
another stack's block (an ``nn.Sequential`` of blocks when the model has no such ModuleList, as in
torchvision/timm; ``layer_stack`` may name any ModuleList or Sequential). Where the config states
layer counts (``num_hidden_layers``, ``n_layer``, ``encoder_layers``, ``len(depths)``, ... also in
sub-configs), the stacks whose length equals one of them are the main ones; otherwise the stack with
the most parameters is. A model may have several (encoder and decoder; vision tower and language
model). Layers that *share parameters* (ALBERT: 12 layers, 1 group) are detected from the config's
layer count being a multiple of the stack length. Everything here reads a walk's
:class:`~hf_freeze.core.model_index.ModelIndex`; nothing walks the module tree again.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .model_index import ModelIndex

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
    index: ModelIndex, root_path: str, kinds: tuple[type[nn.Module], ...] = (nn.ModuleList,)
) -> list[tuple[str, nn.Module]]:
    """Containers of ``kinds`` under ``root_path`` holding blocks of one class, outermost only (a stack
    inside a block is not listed). Reads the index; walks no module tree."""
    found: list[tuple[str, nn.Module]] = []
    inside = root_path + "." if root_path else ""
    taken = None  # prefix of the last stack found: the index is in tree order, its blocks follow it
    for path, module in index.modules_of(kinds):
        if not path.startswith(inside) or path == root_path:
            continue
        if taken is not None and path.startswith(taken):
            continue
        if len(module) > 0 and len({type(block) for block in module}) == 1 and _has_params(module):
            found.append((path, module))
            taken = path + "."
    return found


def _num_params(path: str, index: ModelIndex) -> int:
    prefix = path + "." if path else ""
    return sum(p.numel() for name, p in zip(index.param_names, index.param_tensors) if name.startswith(prefix))


def find_layer_stacks(index: ModelIndex, config: object, base_path: str) -> list[LayerStack]:
    """The main layer stacks under ``base_path`` (the base model's path; see the module docstring), with
    the layer counts ``config`` states; empty when there is none."""
    counts = _config_layer_counts(config)
    candidates = _candidate_stacks(index, base_path) or _candidate_stacks(
        index,
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
        path, module, count = _largest(shared, key=lambda item: _num_params(item[0], index))
        return [LayerStack(path, len(module), count)]
    path, module = _largest(candidates, key=lambda item: (_num_params(item[0], index), len(item[1])))
    return [LayerStack(path, len(module), len(module))]


def _largest(items: list, key):
    """``max`` that does not compute the (costly) key when there is nothing to compare."""
    return items[0] if len(items) == 1 else max(items, key=key)


def named_stack_candidates(index: ModelIndex) -> list[str]:
    """Every non-empty ModuleList or Sequential path of a walk's ``index``, for ``layer_stack`` hints and
    explicit naming."""
    seen: set[int] = set()
    found = []
    for path, module in index.modules_of(STACK_CONTAINERS):
        if path and len(module) and id(module) not in seen:
            seen.add(id(module))
            found.append(path)
    return found


def stack_from_path(modules: dict[str, nn.Module], path: str) -> LayerStack:
    """The stack a ``layer_stack`` pattern named: every block its own layer."""
    module = modules[path]
    return LayerStack(path, len(module), len(module))
