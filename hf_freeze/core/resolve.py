"""Resolve a :class:`FreezeSpec` against a model: the one place where precedence is written.

Precedence, lowest to highest (each parameter records the rule that decided it):
``requires_grad`` (what the model arrived with) < ``freeze_embeddings`` / ``freeze_layers`` <
``freeze:<pattern>`` < ``unfreeze:<pattern>`` < ``train_head``.

Rules refine what the model arrived with, never reset it: the freezing rules (shortcuts and
``freeze`` patterns) decide only parameters that arrived trainable, and ``train_head`` protects the
head from them but never trains a head parameter that arrived frozen (a PEFT base weight, a head
PEFT froze). Only an ``unfreeze`` pattern makes an arrived-frozen parameter trainable, and under
PEFT only where the adapter saves it (:func:`~hf_freeze.core.adapters.check_saved`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import nn

from ..errors import (
    LayerStackNotFoundError,
    NoTrainableParametersError,
    PatternNotFoundError,
    SharedLayersError,
    TiedWeightsConflictError,
)
from .adapters import check_saved
from .discovery import (
    LayerStack,
    ModelStructure,
    discover,
    find_layer_stacks,
    named_stack_candidates,
    stack_from_path,
)
from .matching import closest_names, compile_pattern, matches
from .norm_stats import frozen_norm_modules
from .plan import GROUP_EMBEDDINGS, GROUP_HEAD, GROUP_OTHER, FreezePlan, ParamDecision, _numel, _shape

if TYPE_CHECKING:
    from .spec import FreezeSpec

logger = logging.getLogger("hf_freeze")

RULE_INITIAL = "requires_grad"
RULE_EMBEDDINGS = "freeze_embeddings"
RULE_LAYERS = "freeze_layers"
RULE_HEAD = "train_head"


def _select_stacks(spec: FreezeSpec, model: nn.Module) -> list[LayerStack] | None:
    """The stacks named by ``layer_stack`` (outermost matches only), or None to auto-detect."""
    if spec.layer_stack is None:
        return None
    compiled = compile_pattern(spec.layer_stack, "layer_stack")
    candidates = named_stack_candidates(model)
    chosen = [p for p in candidates if matches(compiled, p)]
    chosen = [p for p in chosen if not any(p != q and p.startswith(q + ".") for q in chosen)]
    if not chosen:
        raise LayerStackNotFoundError(
            f"`layer_stack`={spec.layer_stack!r} matches no nn.ModuleList or nn.Sequential of "
            f"{type(model).__name__}. Candidates: {candidates[:10]}."
        )
    found = {s.path: s for s in find_layer_stacks(model)}  # keeps what discovery knows (shared layers)
    return [found.get(p) or stack_from_path(model, p) for p in chosen]


def _frozen_layers(spec: FreezeSpec, structure: ModelStructure, model: nn.Module) -> dict[str, set[int]]:
    """Stack path -> frozen block indexes, checked against the stack sizes and shared layers."""
    selection = spec.layer_selection
    if selection is None:
        return {}
    if not structure.stacks:
        raise LayerStackNotFoundError(
            f"`freeze_layers`={selection.text!r}: no layer stack found in {type(model).__name__}. Name one "
            f"with `layer_stack` (a pattern over module paths), e.g. one of {named_stack_candidates(model)[:5]}."
        )
    frozen: dict[str, set[int]] = {}
    for stack in structure.stacks:
        layers = selection.indices(stack.num_layers, f"the stack {stack.path!r}")
        if stack.shared:
            per_block = stack.num_layers // stack.num_blocks
            blocks = {stack.block_of_layer(i) for i in layers}
            partial = [
                b for b in sorted(blocks) if not set(range(b * per_block, (b + 1) * per_block)) <= set(layers)
            ]
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


def resolve_plan(spec: FreezeSpec, model: nn.Module) -> FreezePlan:
    structure = discover(model, _select_stacks(spec, model))
    frozen_layers = _frozen_layers(spec, structure, model)
    params = structure.params
    aliases = structure.aliases

    state: dict[str, tuple[bool, str]] = {n: (p.requires_grad, RULE_INITIAL) for n, p in params.items()}
    arrived_trainable = {n for n, p in params.items() if p.requires_grad}
    if spec.freeze_embeddings:
        state.update((name, (False, RULE_EMBEDDINGS)) for name in structure.embedding_names & arrived_trainable)
    if frozen_layers:
        state.update(
            (name, (False, RULE_LAYERS))
            for name, (stack, block) in structure.locations.items()
            if block in frozen_layers.get(stack.path, ()) and name in arrived_trainable
        )

    hits: dict[str, dict[str, int]] = {"freeze": {}, "unfreeze": {}}
    for option, value in (("freeze", False), ("unfreeze", True)):
        for pattern in getattr(spec, option):
            search = compile_pattern(pattern, option).search
            hit = [
                name
                for name, names in aliases.items()
                if search(name) or (len(names) > 1 and any(search(alias) for alias in names))
            ]
            decided = (value, f"{option}:{pattern}")
            # A freeze pattern over an arrived-frozen parameter decides nothing (it stays "requires_grad"),
            # so gradual unfreezing, which brings back what the rules froze, never reaches it.
            state.update((name, decided) for name in hit if value or name in arrived_trainable)
            hits[option][pattern] = len(hit)
            if not hit:
                message = (
                    f"`{option}` pattern {pattern!r} matched no parameter of {type(model).__name__}. Patterns "
                    f"match whole dot-separated segments; closest names: {closest_names(pattern, params)}."
                )
                if spec.freeze_strict:
                    raise PatternNotFoundError(message + " Fix the pattern or set freeze_strict=False.")
                logger.warning(message)

    if spec.train_head:
        # Protects the head from this plan's freezing rules; what arrived frozen only `unfreeze` trains.
        for name in sorted(structure.head_names & arrived_trainable):
            trainable, rule = state[name]
            tied = aliases[name]
            if len(tied) > 1 and not trainable and rule != RULE_INITIAL:
                raise TiedWeightsConflictError(
                    f"{' and '.join(repr(a) for a in tied)} are one tied tensor: `{rule.split(':')[0]}` "
                    f"({rule}) freezes it while `train_head`=True trains it as part of the head. Choose one: add "
                    f"it to `unfreeze` (train both), set `train_head`=False (freeze both), or untie the weights "
                    f"(config.tie_word_embeddings=False)."
                )
            state[name] = (True, RULE_HEAD)

    zero3 = any("ds_numel" in p.__dict__ for p in params.values())  # DeepSpeed partitioned the model
    layer_groups: dict[tuple[str, int], str] = {}
    decisions = []
    for name, param in params.items():
        where = structure.locations.get(name)
        if where is not None:
            stack, layer = where[0].path, where[1]
            group = layer_groups.get((stack, layer)) or layer_groups.setdefault((stack, layer), f"{stack}.{layer}")
        else:
            stack = layer = None
            if name in structure.embedding_names:
                group = GROUP_EMBEDDINGS
            elif name in structure.head_names:
                group = GROUP_HEAD
            else:
                group = GROUP_OTHER
        trainable, rule = state[name]
        decisions.append(
            ParamDecision(
                name,
                _shape(param) if zero3 else list(param.shape),
                _numel(param) if zero3 else param.numel(),
                trainable,
                rule,
                group,
                stack,
                layer,
                aliases[name][1:],  # the first name is the canonical one
            )
        )

    if not any(d.trainable for d in decisions):
        rules = sorted({d.rule for d in decisions})
        raise NoTrainableParametersError(
            f"The freeze plan leaves no trainable parameter in {type(model).__name__} (decided by {rules}). "
            "Loosen `freeze`/`freeze_layers`/`freeze_embeddings`, add an `unfreeze` pattern (the only rule that "
            "trains what arrived frozen), or keep `train_head`=True on a model whose head arrived trainable."
        )
    if spec.freezes_anything:
        check_saved(model, [d.name for d in decisions if d.trainable])
    trainable_map = {d.name: d.trainable for d in decisions}
    return FreezePlan(
        model_class=type(model).__name__,
        spec=spec.to_dict(),
        params=decisions,
        pattern_hits=hits,
        ties=[names for names in aliases.values() if len(names) > 1],
        stacks=[
            {"path": s.path, "num_blocks": s.num_blocks, "num_layers": s.num_layers} for s in structure.stacks
        ],
        frozen_norms=frozen_norm_modules(structure.modules, trainable_map) if spec.freeze_norm_stats else [],
    )
