"""Property-based tests of the core (hypothesis): generated module trees and generated option sets.

Each generated model is a small ``transformers.PreTrainedModel`` whose base model holds nested
``ModuleList``/``Sequential`` blocks with names made of digits, underscores and repeated segments,
optionally a second stack, a module reachable under two names (shared) and a head tied to the input
embeddings. An independent oracle, written from SPEC.md (section 3), predicts every decision; the
tests compare the plan with it through the public API only (``FreezeSpec``, ``FreezePlan``,
``compile_pattern``/``matches``).

The examples are derandomized (the same ones on every run, so the suite cannot flake) and bounded;
``HF_FREEZE_PROPERTY_EXAMPLES=N`` multiplies them for a longer exploration (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field

import pytest
import torch
import transformers as tf
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn

from hf_freeze import (
    FreezeError,
    FreezePlan,
    FreezeSpec,
    LayerRangeError,
    NoTrainableParametersError,
    PatternNotFoundError,
    PlanMismatchError,
    TiedWeightsConflictError,
    compile_pattern,
    matches,
)
from hf_freeze.core.partial_checkpoint import (
    STATE_FILE,
    fingerprint_frozen,
    load_trainable_state,
    save_trainable_state,
)

SCALE = max(1, int(os.environ.get("HF_FREEZE_PROPERTY_EXAMPLES", "1")))


def bounded(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# --------------------------------------------------------------------------- generated models
HIDDEN = 4
SEGMENTS = [
    "layer",
    "layers",
    "block",
    "h",
    "mlp",
    "attn",
    "proj",
    "dense",
    "norm",
    "out",
    "x",
    "layer_1",
    "layer1",
    "l0_",
    "a_b",
    "1x",
    "10",
    "11",
    "1",
    "2",
    "0",
]


class GenConfig(tf.PretrainedConfig):
    model_type = "hf_freeze_generated"


class GenModel(tf.PreTrainedModel):
    """A PreTrainedModel-shaped container: ``base`` is the base model, ``head_name`` the task head."""

    config_class = GenConfig
    base_model_prefix = "base"

    def __init__(self, config: GenConfig, input_embeddings: nn.Module | None, output: nn.Module | None):
        super().__init__(config)
        self._input_embeddings = [input_embeddings]  # a list: not registered as a submodule
        self._output = [output]

    def get_input_embeddings(self):
        return self._input_embeddings[0]

    def get_output_embeddings(self):
        return self._output[0]


def _usable(name: str) -> bool:
    return not hasattr(GenModel, name) and not hasattr(nn.Sequential, name) and not hasattr(nn.ModuleList, name)


names_st = st.sampled_from([s for s in SEGMENTS if _usable(s)])
kind_st = st.sampled_from(["linear", "norm", "seq", "list"])


@dataclass
class Tree:
    """A description of a model (plain data, so hypothesis shrinks it well)."""

    n_layers: int
    stack_path: list[str]
    block: list[tuple[str, str]]
    others: list[tuple[str, str]]
    second_stack: str | None
    share: bool
    embeddings: bool
    tie: bool
    head_name: str
    flags: list[bool] = field(default_factory=list)  # arrival requires_grad, cycled over non-head params


def _child(kind: str, length: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(HIDDEN, HIDDEN)
    if kind == "norm":
        return nn.LayerNorm(HIDDEN)
    if kind == "seq":
        return nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Sequential(nn.Linear(HIDDEN, HIDDEN)))
    return nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(length))


def _block(tree: Tree) -> nn.Module:
    block = nn.Sequential()
    for name, kind in tree.block:
        block.add_module(name, _child(kind, 2))
    return block


def build_model(tree: Tree) -> GenModel:
    torch.manual_seed(0)
    base = nn.Module()
    word = None
    if tree.embeddings:
        base.embeddings = nn.Module()
        base.embeddings.word_embeddings = nn.Embedding(7, HIDDEN)
        base.embeddings.position_embeddings = nn.Embedding(5, HIDDEN)
        base.embeddings.LayerNorm = nn.LayerNorm(HIDDEN)
        word = base.embeddings.word_embeddings
    parent = base
    for segment in tree.stack_path[:-1]:
        parent.add_module(segment, nn.Sequential())
        parent = getattr(parent, segment)
    parent.add_module(tree.stack_path[-1], nn.ModuleList(_block(tree) for _ in range(tree.n_layers)))
    if tree.second_stack:
        base.add_module(tree.second_stack, nn.ModuleList(_block(tree) for _ in range(tree.n_layers)))
    for name, kind in tree.others:
        # a ModuleList here must not look like a main stack: its length differs from the layer count
        base.add_module(name, _child(kind, tree.n_layers + 1))
    if tree.share and tree.others:
        base.add_module(tree.others[0][0] + "_again", getattr(base, tree.others[0][0]))
    head = nn.Linear(HIDDEN, 7, bias=False) if tree.tie else nn.Linear(HIDDEN, 3)
    if tree.tie:
        head.weight = word.weight
    model = GenModel(GenConfig(num_hidden_layers=tree.n_layers), word, head if tree.tie else None)
    model.base = base
    model.add_module(tree.head_name, head)
    flags = tree.flags or [True]
    for i, (name, param) in enumerate(model.named_parameters()):
        if not _under(name, tree.head_name):
            param.requires_grad_(flags[i % len(flags)])
    return model


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@st.composite
def trees(draw, head_flags: bool = False) -> Tree:
    n_layers = draw(st.integers(1, 4))
    stack_path = draw(st.lists(names_st, min_size=1, max_size=3))
    block = draw(st.lists(st.tuples(names_st, kind_st), min_size=1, max_size=3, unique_by=lambda c: c[0]))
    taken = {"embeddings", stack_path[0]}
    others = draw(
        st.lists(st.tuples(names_st.filter(lambda n: n not in taken), kind_st), max_size=3, unique_by=lambda c: c[0])
    )
    taken |= {name for name, _ in others} | {name + "_again" for name, _ in others}
    second = draw(st.none() | names_st.filter(lambda n: n not in taken))
    embeddings = draw(st.booleans())
    return Tree(
        n_layers=n_layers,
        stack_path=stack_path,
        block=block,
        others=others,
        second_stack=second,
        share=draw(st.booleans()),
        embeddings=embeddings,
        tie=embeddings and draw(st.booleans()),
        head_name=draw(st.sampled_from(["classifier", "score", "lm_head", "head_2", "cls_1"])),
        flags=draw(st.lists(st.booleans(), min_size=1, max_size=6)),
    )


# --------------------------------------------------------------------------- the oracle (from SPEC.md)
def segment_regex(pattern: str) -> re.Pattern[str]:
    """SPEC 3, Matching: a pattern is tried as (?:^|\\.)(?:PATTERN)(?:\\.|$) with re.search."""
    return re.compile(rf"(?:^|\.)(?:{pattern})(?:\.|$)")


def all_names(model: nn.Module) -> dict[str, list[str]]:
    """Canonical name (the one named_parameters() yields) -> every name of that tensor, via torch only."""
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    return {names[0]: names for names in by_id.values()}


def stack_paths(tree: Tree) -> list[str]:
    paths = ["base." + ".".join(tree.stack_path)]
    return paths + (["base." + tree.second_stack] if tree.second_stack else [])


def layer_of(tree: Tree, name: str) -> int | None:
    for path in stack_paths(tree):
        if name.startswith(path + "."):
            return int(name[len(path) + 1 :].split(".")[0])
    return None


def frozen_layer_indexes(value, n_layers: int) -> set[int]:
    if value is None:
        return set()
    if value == "all":
        return set(range(n_layers))
    if isinstance(value, int):
        return set(range(value))
    start, stop = value.split(":")
    return set(range(n_layers)[slice(int(start) if start else None, int(stop) if stop else None)])


@dataclass
class Expected:
    error: type | None
    decisions: dict[str, tuple[bool, set[str]]]  # canonical name -> (trainable, acceptable rules)
    hits: dict[str, dict[str, int]]


def oracle(tree: Tree, model: nn.Module, options: dict) -> Expected:
    names = all_names(model)
    arrived = dict(model.named_parameters())
    hits: dict[str, dict[str, int]] = {"freeze": {}, "unfreeze": {}}
    matched: dict[str, dict[str, list[str]]] = {"freeze": {}, "unfreeze": {}}
    for option in ("freeze", "unfreeze"):
        for pattern in options.get(option, []):
            regex = segment_regex(pattern)
            hit = [c for c, ns in names.items() if any(regex.search(n) for n in ns)]
            hits[option][pattern] = len(hit)
            for c in hit:
                matched[option].setdefault(c, []).append(pattern)
    layers = frozen_layer_indexes(options.get("freeze_layers"), tree.n_layers)
    before_head: dict[str, tuple[bool, set[str]]] = {}
    for canonical in names:
        if canonical in matched["unfreeze"]:
            before_head[canonical] = (True, {f"unfreeze:{p}" for p in matched["unfreeze"][canonical]})
        elif not arrived[canonical].requires_grad:  # the freezing rules decide only what arrived trainable
            before_head[canonical] = (False, {"requires_grad"})
        elif canonical in matched["freeze"]:
            before_head[canonical] = (False, {f"freeze:{p}" for p in matched["freeze"][canonical]})
        elif layer_of(tree, canonical) in layers:
            before_head[canonical] = (False, {"freeze_layers"})
        elif options.get("freeze_embeddings") and canonical.startswith("base.embeddings."):
            before_head[canonical] = (False, {"freeze_embeddings"})
        else:
            before_head[canonical] = (arrived[canonical].requires_grad, {"requires_grad"})
    decisions = dict(before_head)
    conflict = False
    if options.get("train_head", True):
        for canonical, ns in names.items():
            if any(_under(n, tree.head_name) for n in ns) and arrived[canonical].requires_grad:
                trainable, rules = before_head[canonical]
                if len(ns) > 1 and not trainable and rules != {"requires_grad"}:
                    conflict = True
                decisions[canonical] = (True, {"train_head"} | (rules if trainable else set()))
    error = None
    if options.get("freeze_strict", True) and any(0 in h.values() for h in hits.values()):
        error = PatternNotFoundError
    elif conflict:
        error = TiedWeightsConflictError
    elif not any(t for t, _ in decisions.values()):
        error = NoTrainableParametersError
    return Expected(error, decisions, hits)


# --------------------------------------------------------------------------- generated options
@st.composite
def patterns(draw, names: list[str]) -> str:
    """A pattern built from the model's own names (usually hits) or from the vocabulary (may miss)."""
    segments = draw(st.sampled_from(names)).split(".")
    start = draw(st.integers(0, len(segments) - 1))
    stop = draw(st.integers(start + 1, min(len(segments), start + 3)))
    piece = segments[start:stop]
    style = draw(st.sampled_from(["escaped", "dotted", "class", "vocabulary"]))
    if style == "escaped":
        return r"\.".join(re.escape(s) for s in piece)
    if style == "dotted":
        return ".".join(piece)
    if style == "class":
        return ".".join(piece[:-1] + ["[0-9a-z_]+"])
    return draw(names_st)


@st.composite
def cases(draw, head_arrives_frozen: bool = False):
    tree = draw(trees())
    model = build_model(tree)
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    layers = st.none() | st.integers(0, tree.n_layers) | st.sampled_from(["all"])
    layers = layers | st.integers(1, tree.n_layers).flatmap(lambda k: st.sampled_from([f":{k}", f"-{k}:"]))
    options = {
        "freeze": draw(st.lists(patterns(names), max_size=3)),
        "unfreeze": draw(st.lists(patterns(names), max_size=2)),
        "freeze_embeddings": draw(st.booleans()),
        "freeze_layers": draw(layers),
        "train_head": draw(st.booleans()),
        "freeze_strict": draw(st.booleans()),
    }
    if head_arrives_frozen:
        for name, param in model.named_parameters():
            if _under(name, tree.head_name) or (tree.tie and name == "base.embeddings.word_embeddings.weight"):
                param.requires_grad_(False)
        options["train_head"] = True
    return tree, model, options


def flags(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- properties
@bounded(150)
@given(cases())
def test_every_parameter_gets_one_decision_as_the_spec_says(case):
    tree, model, options = case
    expected = oracle(tree, model, options)
    try:
        plan = FreezeSpec(**options).resolve(model)
    except FreezeError as err:
        event(f"error: {type(err).__name__}")
        assert expected.error is not None and isinstance(err, expected.error), f"{type(err).__name__}: {err}"
        return
    assert expected.error is None, f"expected {expected.error.__name__}"
    event(f"resolved: {len(set(d.rule.split(':')[0] for d in plan.params))} kinds of rule")
    names = all_names(model)
    # exactly one decision per tensor, in named_parameters() order; the other names are its aliases
    assert [d.name for d in plan.params] == list(names)
    for decision in plan.params:
        trainable, rules = expected.decisions[decision.name]
        assert (decision.trainable, decision.rule in rules) == (trainable, True), (decision, rules)
        assert decision.aliases == names[decision.name][1:]
        for alias in decision.aliases:
            assert plan.decision(alias) is decision
    assert sorted(map(sorted, plan.ties)) == sorted(sorted(ns) for ns in names.values() if len(ns) > 1)
    # hit counts: the tensors the documented regex accepts, and the public matcher agrees with it
    assert plan.pattern_hits == expected.hits
    for option in ("freeze", "unfreeze"):
        for pattern in options[option]:
            compiled = compile_pattern(pattern, option)
            by_matcher = sum(any(matches(compiled, n) for n in ns) for ns in names.values())
            assert by_matcher == plan.pattern_hits[option][pattern]
    assert plan.trainable_numel == sum(d.numel for d in plan.params if d.trainable)
    assert plan.total_numel == sum(p.numel() for p in model.parameters())


@bounded(80)
@given(cases())
def test_apply_is_idempotent_and_json_round_trips(case):
    tree, model, options = case
    try:
        plan = FreezeSpec(**options).resolve(model)
    except FreezeError:
        assume(False)
    plan.apply(model)
    applied = flags(model)
    assert applied == {d.name: d.trainable for d in plan.params}
    plan.apply(model)
    assert flags(model) == applied
    again = FreezeSpec(**options).resolve(model)  # resolving the applied model decides the same
    assert again.plan_hash == plan.plan_hash
    again.apply(model)
    assert flags(model) == applied
    for text in (plan.to_json(), plan.to_json(indent=None)):
        loaded = FreezePlan.from_json(text)
        assert loaded.to_dict() == plan.to_dict()
        assert json.loads(loaded.to_json()) == json.loads(text)


@bounded(15)
@given(cases(head_arrives_frozen=True))
def test_train_head_never_unfreezes_what_arrived_frozen(case):
    tree, model, options = case
    arrived_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    try:
        plan = FreezeSpec(**options).resolve(model)
    except FreezeError:
        assume(False)
    names = all_names(model)
    for canonical in arrived_frozen:
        rescued = any(segment_regex(p).search(n) for p in options["unfreeze"] for n in names[canonical])
        if not rescued:
            assert not plan.decision(canonical).trainable, canonical


# --------------------------------------------------------------------------- the matcher
segment_st = st.from_regex(r"[a-z0-9_]{1,4}", fullmatch=True)


@bounded(200)
@given(st.lists(segment_st, min_size=1, max_size=6), st.lists(segment_st, min_size=1, max_size=3))
def test_a_literal_pattern_matches_exactly_a_run_of_whole_segments(name_segments, pattern_segments):
    name = ".".join(name_segments)
    pattern = r"\.".join(re.escape(s) for s in pattern_segments)
    k = len(pattern_segments)
    contiguous = any(name_segments[i : i + k] == pattern_segments for i in range(len(name_segments) - k + 1))
    assert matches(compile_pattern(pattern), name) == contiguous


@bounded(150)
@given(
    st.lists(segment_st.filter(lambda s: s not in ("layer", "1")), max_size=3),
    st.from_regex(r"[0-9a-z_]{1,3}", fullmatch=True),
    st.lists(segment_st.filter(lambda s: s not in ("layer", "1")), max_size=3),
    st.sampled_from(["1", "3", "0"]),
)
def test_layer_n_never_matches_a_layer_nx_segment(prefix, suffix, rest, digit):
    name = ".".join([*prefix, "layer", digit + suffix, *rest])
    assert not any(re.fullmatch(rf"layer[^.]{digit}", s) for s in prefix + rest)  # no other way to match
    assert not matches(compile_pattern(f"layer.{digit}"), name)
    assert matches(compile_pattern(f"layer.{digit}"), ".".join([*prefix, "layer", digit, *rest]))


# --------------------------------------------------------------------------- freeze_layers
def stack_model(n_layers: int) -> GenModel:
    tree = Tree(
        n_layers=n_layers,
        stack_path=["layer"],
        block=[("dense", "linear")],
        others=[],
        second_stack=None,
        share=False,
        embeddings=False,
        tie=False,
        head_name="classifier",
    )
    return build_model(tree)


def frozen_by_layers(plan: FreezePlan) -> set[int]:
    return {d.layer for d in plan.params if d.rule == "freeze_layers"}


bound_st = st.none() | st.integers(-7, 7)


@bounded(150)
@given(st.integers(1, 5), bound_st, bound_st, st.none() | st.integers(-3, 3))
def test_freeze_layers_slices_agree_with_python_in_range_and_are_errors_outside(n, start, stop, step):
    text = ("" if start is None else str(start)) + ":" + ("" if stop is None else str(stop))
    if step is not None:
        text += f":{step}"
    model = stack_model(n)
    in_range = all(b is None or -n <= b <= n for b in (start, stop))
    python = set(range(n)[slice(start, stop, step)]) if step != 0 else None
    if not in_range or step == 0 or (not python and text != "0:0"):
        with pytest.raises(LayerRangeError, match="freeze_layers"):
            FreezeSpec(freeze_layers=text).resolve(model)
        return
    assert frozen_by_layers(FreezeSpec(freeze_layers=text).resolve(model)) == python


@bounded(100)
@given(st.integers(1, 5), st.lists(st.integers(-7, 7) | st.tuples(bound_st, bound_st), min_size=2, max_size=3))
def test_freeze_layers_comma_lists_are_the_union_and_bounds_are_never_clamped(n, parts):
    texts, python, ok = [], set(), True
    for part in parts:
        if isinstance(part, int):
            texts.append(str(part))
            ok &= -n <= part < n
            python |= {part % n} if -n <= part < n else set()
        else:
            start, stop = part
            texts.append(("" if start is None else str(start)) + ":" + ("" if stop is None else str(stop)))
            ok &= all(b is None or -n <= b <= n for b in part)
            python |= set(range(n)[slice(start, stop)])
    text = ",".join(texts)
    model = stack_model(n)
    if not ok or not python:
        with pytest.raises(LayerRangeError, match="freeze_layers"):
            FreezeSpec(freeze_layers=text).resolve(model)
        return
    assert frozen_by_layers(FreezeSpec(freeze_layers=text).resolve(model)) == python


@bounded(40)
@given(st.integers(1, 5), st.integers(-3, 8))
def test_freeze_layers_int_is_the_bottom_n(n, count):
    model = stack_model(n)
    for value in (count, str(count)):
        if not 0 <= count <= n:
            with pytest.raises(LayerRangeError, match="freeze_layers"):
                FreezeSpec(freeze_layers=value).resolve(model)
        else:
            assert frozen_by_layers(FreezeSpec(freeze_layers=value).resolve(model)) == set(range(count))


# --------------------------------------------------------------------------- partial checkpoints
@bounded(100)
@given(cases())
def test_a_partial_checkpoint_holds_the_trainable_set_and_rebuilds_bitwise(case):
    """``save_trainable_state`` stores exactly the plan's trainable tensors (a tie or a shared module once,
    under its canonical name), and loading it onto a fresh copy of the base reproduces the trained model
    bitwise; another base (one frozen value changed) is refused before anything is copied."""
    tree, model, options = case
    try:
        plan = FreezeSpec(**options).resolve(model)
    except FreezeError:
        assume(False)
    plan.apply(model)
    fingerprint = fingerprint_frozen(model, plan)
    with torch.no_grad():  # "training": every trainable tensor moves, nothing frozen does
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    trained = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as folder:
        save_trainable_state(model, plan, folder, fingerprint=fingerprint)
        with safe_open(os.path.join(folder, STATE_FILE), framework="pt") as handle:
            assert set(handle.keys()) == set(plan.trainable_names)
        assert set(plan.trainable_names) == {d.name for d in plan.params if d.trainable}

        fresh = build_model(tree)
        plan.apply(fresh)
        load_trainable_state(fresh, folder, plan=plan)
        rebuilt = fresh.state_dict()
        assert rebuilt.keys() == trained.keys()
        assert all(torch.equal(rebuilt[n], trained[n]) for n in trained), "the rebuild differs from the trained model"

        frozen = [n for n, p in build_model(tree).named_parameters() if not plan.decision(n).trainable]
        if frozen:
            other = build_model(tree)
            with torch.no_grad():
                other.get_parameter(frozen[0]).view(-1)[0] += 1
            before = {n: t.clone() for n, t in other.state_dict().items()}
            with pytest.raises(PlanMismatchError):
                load_trainable_state(other, folder, plan=plan)
            assert all(torch.equal(t, before[n]) for n, t in other.state_dict().items()), "a refused load changed it"
