"""Resolve freezing options against a model: the one place where precedence is written.

Precedence, lowest to highest (each parameter records the rule that decided it, a
:class:`~hf_freeze.core.rules.Rule`): ``requires_grad`` (what the model arrived with) <
``freeze_embeddings`` / ``freeze_layers`` < ``freeze`` patterns < ``unfreeze`` patterns < ``train_head``.

Rules refine what the model arrived with, never reset it: the freezing rules (shortcuts and
``freeze`` patterns) decide only parameters that arrived trainable, and ``train_head`` protects the
head from them but never trains a head parameter that arrived frozen (a PEFT base weight, a head
PEFT froze). Only an ``unfreeze`` pattern makes an arrived-frozen parameter trainable, and under
PEFT only where the adapter saves it (:func:`~hf_freeze.core.adapters.check_saved`).

The module tree is walked once (:func:`~hf_freeze.core.model_index.walk_model`); everything else reads
that index. The options come in as any object with the attributes of :class:`FreezeOptions`
(``FreezeSpec`` is one), so this module does not import the spec.
"""

from __future__ import annotations

import logging
from itertools import repeat
from operator import attrgetter, contains
from typing import Any, Protocol

from torch import nn

from ..errors import (
    LayerStackNotFoundError,
    NoTrainableParametersError,
    PatternNotFoundError,
    SharedLayersError,
    TiedWeightsConflictError,
)
from .adapters import check_saved
from .discovery import ModelStructure, Place, discover, model_roots
from .layer_selection import LayerSelection
from .layer_stacks import LayerStack, find_layer_stacks, named_stack_candidates, stack_from_path
from .matching import closest_names, compile_pattern, matches
from .model_index import ModelIndex, paused_gc, walk_model
from .norm_stats import frozen_norms, running_stats_modules
from .param_decision import GROUP_EMBEDDINGS, GROUP_HEAD, GROUP_OTHER, ParamDecision, param_numel, param_shape
from .plan import FreezePlan
from .rules import AppliedRule, Rule

logger = logging.getLogger("hf_freeze")

# The rules that decide without a pattern (one object each; a plan's records share them).
_ARRIVED, _BY_EMBEDDINGS = AppliedRule(Rule.REQUIRES_GRAD), AppliedRule(Rule.FREEZE_EMBEDDINGS)
_BY_LAYERS, _BY_HEAD = AppliedRule(Rule.FREEZE_LAYERS), AppliedRule(Rule.TRAIN_HEAD)
_MISSING = object()


class FreezeOptions(Protocol):
    """What resolving reads from the options (``FreezeSpec`` provides it)."""

    freeze: list[str]
    unfreeze: list[str]
    freeze_embeddings: bool
    layer_stack: str | None
    train_head: bool
    freeze_norm_stats: bool
    freeze_strict: bool

    @property
    def layer_selection(self) -> LayerSelection | None: ...

    @property
    def freezes_anything(self) -> bool: ...

    def to_dict(self) -> dict[str, Any]: ...


def _select_stacks(spec: FreezeOptions, model: nn.Module, index: ModelIndex) -> list[LayerStack] | None:
    """The stacks named by ``layer_stack`` (outermost matches only), or None to auto-detect."""
    if spec.layer_stack is None:
        return None
    compiled = compile_pattern(spec.layer_stack, "layer_stack")
    candidates = named_stack_candidates(index)
    chosen = [p for p in candidates if matches(compiled, p)]
    chosen = [p for p in chosen if not any(p != q and p.startswith(q + ".") for q in chosen)]
    if not chosen:
        raise LayerStackNotFoundError(
            f"`layer_stack`={spec.layer_stack!r} matches no nn.ModuleList or nn.Sequential of "
            f"{type(model).__name__}. Candidates: {candidates[:10]}."
        )
    _, pretrained, base_path = model_roots(model, index)
    found = find_layer_stacks(index, getattr(pretrained, "config", None), base_path)
    detected = {s.path: s for s in found}  # keeps what discovery knows (shared layers)
    return [detected.get(p) or stack_from_path(index.modules, p) for p in chosen]


def _frozen_layers(
    selection: LayerSelection | None, structure: ModelStructure, model: nn.Module
) -> dict[str, set[int]]:
    """Stack path -> frozen block indexes, checked against the stack sizes and shared layers."""
    if selection is None:
        return {}
    if not structure.stacks:
        hint = named_stack_candidates(structure.index)[:5]
        raise LayerStackNotFoundError(
            f"`freeze_layers`={selection.text!r}: no layer stack found in {type(model).__name__}. Name one "
            f"with `layer_stack` (a pattern over module paths), e.g. one of {hint}."
        )
    frozen: dict[str, set[int]] = {}
    for stack in structure.stacks:
        layers = selection.indices(stack.num_layers, f"the stack {stack.path!r}")
        if stack.shared:
            per_block = stack.num_layers // stack.num_blocks
            blocks = {stack.block_of_layer(i) for i in layers}
            partial = [b for b in sorted(blocks) if not set(range(b * per_block, (b + 1) * per_block)) <= set(layers)]
            if partial:
                b = partial[0]
                raise SharedLayersError(
                    f"`freeze_layers`={selection.text!r}: in {stack.path!r} the {stack.num_layers} layers share "
                    f"{stack.num_blocks} parameter group(s) ({per_block} layers each), so layers "
                    f"{b * per_block}..{(b + 1) * per_block - 1} can only be frozen together. Use a range made "
                    f"of whole groups (e.g. ':{per_block}') or 'all'."
                )
            frozen[stack.path] = blocks
        else:
            frozen[stack.path] = set(layers)
    return frozen


def resolve_plan(spec: FreezeOptions, model: nn.Module) -> FreezePlan:
    """Decide, for every parameter of ``model``, whether it trains and which rule said so."""
    # Resolving allocates a record per parameter, which makes Python's cyclic GC rescan the whole model
    # graph again and again: half the time for 100k tensors, and none of it is garbage.
    with paused_gc():
        index = walk_model(model)
        structure = discover(model, _select_stacks(spec, model, index), index)
        plan = _decide(spec, model, structure, index)
        plan.remember_source(model, index.param_tensors)
        return plan


def _pattern_overrides(
    spec: FreezeOptions, model: nn.Module, structure: ModelStructure
) -> tuple[dict[str, tuple[bool, AppliedRule]], dict[str, dict[str, int]]]:
    """What the ``freeze`` then ``unfreeze`` patterns decide (name -> (trainable, rule)), and their hit counts."""
    names, ties = structure.index.param_names, structure.ties
    decided: dict[str, tuple[bool, AppliedRule]] = {}
    hits: dict[str, dict[str, int]] = {"freeze": {}, "unfreeze": {}}
    for kind, value in ((Rule.FREEZE, False), (Rule.UNFREEZE, True)):
        option = kind.value
        for pattern in getattr(spec, option):
            search = compile_pattern(pattern, option).search
            hit = [name for name in names if search(name)]
            if ties:
                matched = set(hit)
                hit += [n for n, others in ties.items() if n not in matched and any(search(a) for a in others)]
            verdict = (value, AppliedRule(kind, pattern))
            # A freeze pattern over an arrived-frozen parameter decides nothing (it stays "requires_grad"),
            # so gradual unfreezing, which brings back what the rules froze, never reaches it.
            params = structure.index.params  # a dict only when a pattern is set
            decided.update((name, verdict) for name in hit if value or params[name].requires_grad)
            hits[option][pattern] = len(hit)
            if not hit:
                message = (
                    f"`{option}` pattern {pattern!r} matched no parameter of {type(model).__name__}. Patterns "
                    f"match whole dot-separated segments; closest names: {closest_names(pattern, names)}."
                )
                if spec.freeze_strict:
                    raise PatternNotFoundError(message + " Fix the pattern or set freeze_strict=False.")
                logger.warning(message)
    return decided, hits


def _decide(spec: FreezeOptions, model: nn.Module, structure: ModelStructure, index: ModelIndex) -> FreezePlan:
    frozen_layers = _frozen_layers(spec.layer_selection, structure, model)
    head, ties = structure.head_params, structure.ties
    embeddings = structure.embedding_names if spec.freeze_embeddings else set()

    def shortcut(name: str, param: nn.Parameter) -> tuple[bool, AppliedRule]:
        """What the model brought and the shortcuts (``freeze_layers`` outranks ``freeze_embeddings``) say."""
        if not param.requires_grad:
            return False, _ARRIVED
        where = structure.location(name)
        if where is not None and where[1] in frozen_layers.get(where[0].path, ()):
            return False, _BY_LAYERS
        if name in embeddings:
            return False, _BY_EMBEDDINGS
        return True, _ARRIVED

    decided, hits = _pattern_overrides(spec, model, structure)
    if spec.train_head:
        # Protects the head from this plan's freezing rules; what arrived frozen only `unfreeze` trains.
        for name in sorted(n for n, param in head.items() if param.requires_grad):
            trainable, rule = decided.get(name) or shortcut(name, head[name])
            if name in ties and not trainable and rule.kind is not Rule.REQUIRES_GRAD:
                tied = [name, *ties[name]]
                raise TiedWeightsConflictError(
                    f"{' and '.join(repr(a) for a in tied)} are one tied tensor: `{rule.kind.value}` "
                    f"({rule}) freezes it while `train_head`=True trains it as part of the head. Choose one: add "
                    f"it to `unfreeze` (train both), set `train_head`=False (freeze both), or untie the weights "
                    f"(config.tie_word_embeddings=False)."
                )
            decided[name] = (True, _BY_HEAD)

    decisions = _decisions(structure, frozen_layers, decided, embeddings)
    if not any(map(attrgetter("trainable"), decisions)):
        rules = sorted({str(d.rule) for d in decisions})
        raise NoTrainableParametersError(
            f"The freeze plan leaves no trainable parameter in {type(model).__name__} (decided by {rules}). "
            "Loosen `freeze`/`freeze_layers`/`freeze_embeddings`, add an `unfreeze` pattern (the only rule that "
            "trains what arrived frozen), or keep `train_head`=True on a model whose head arrived trainable."
        )
    if spec.freezes_anything:
        check_saved(model, (d.name for d in decisions if d.trainable))  # read only for a PEFT model
    norms = list(running_stats_modules(index)) if spec.freeze_norm_stats else []
    if norms:
        names = index.names()
        fixed = frozen_norms(norms, names, {d.name: d.trainable for d in decisions})
    else:
        fixed = []
    return FreezePlan(
        model_class=type(model).__name__,
        spec=spec.to_dict(),
        params=decisions,
        pattern_hits=hits,
        ties=[[name, *ties[name]] for name in structure.index.param_names if name in ties] if ties else [],
        stacks=[{"path": s.path, "num_blocks": s.num_blocks, "num_layers": s.num_layers} for s in structure.stacks],
        frozen_norms=fixed,
    )


# The layer of a module's parameters, as the plan records it: stack path, block index, group label,
# frozen; None for a module outside the layers.
_LayerInfo = tuple[str, int, str, bool] | None


def _decisions(
    structure: ModelStructure,
    frozen_layers: dict[str, set[int]],
    decided: dict[str, tuple[bool, AppliedRule]],
    embeddings: set[str],
) -> list[ParamDecision]:
    """One record per parameter, in the walk's order. This loop runs once per tensor (100k for a large
    model), so what can be worked out once per place (a layer block, the head, ...) or per shape is, and
    the shortcuts are inlined."""
    index, ties, places, tied = structure.index, structure.ties, structure.places, structure.tied_locations
    head_names, embedding_names = structure.head_params, structure.embedding_names
    by_place: dict[int, _LayerInfo] = {}  # id of a place -> its layer info; discovery shares one place per block

    def layer_info(place: Place) -> _LayerInfo:
        if type(place) is not tuple:
            return None
        path, block = place[0].path, place[1]
        return (path, block, f"{path}.{block}", block in frozen_layers.get(path, ()))

    # Shape -> (its list, numel): tensors of one shape share them (a model has a few dozen shapes).
    by_size: dict[tuple[int, ...], tuple[list[int], int]] = {}
    zero3 = _partitioned(index.param_tensors)
    decisions = []
    append = decisions.append
    for name, param in zip(index.param_names, index.param_tensors):
        place = places[name.rpartition(".")[0]]
        info = by_place.get(id(place), _MISSING)
        if info is _MISSING:
            info = by_place[id(place)] = layer_info(place)
        if info is None and tied and name in tied:
            info = layer_info(tied[name])
        if info is not None:
            stack, layer, group, layer_frozen = info
        else:
            stack = layer = None
            layer_frozen = False
            group = GROUP_EMBEDDINGS if name in embedding_names else GROUP_HEAD if name in head_names else GROUP_OTHER
        verdict = decided.get(name) if decided else None
        if verdict is not None:
            trainable, rule = verdict
        elif not param.requires_grad:
            trainable, rule = False, _ARRIVED
        elif layer_frozen:
            trainable, rule = False, _BY_LAYERS
        elif embeddings and name in embeddings:
            trainable, rule = False, _BY_EMBEDDINGS
        else:
            trainable, rule = True, _ARRIVED
        if zero3:
            shape, numel = param_shape(param), param_numel(param)
        else:
            size = param.shape
            known = by_size.get(size)
            if known is None:
                known = by_size[size] = (list(size), param.numel())
            shape, numel = known
        aliases = list(ties[name]) if ties and name in ties else []
        append(ParamDecision(name, shape, numel, trainable, rule, group, stack, layer, aliases))
    return decisions


def _partitioned(params: list[nn.Parameter]) -> bool:
    """Whether DeepSpeed ZeRO-3 partitioned any parameter (its real shape then lives in ``ds_shape``)."""
    return any(map(contains, map(vars, params), repeat("ds_numel")))  # no Python frame per tensor
