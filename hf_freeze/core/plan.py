"""``FreezePlan``: per parameter, whether it trains and why; applied to a model, reported, saved.

A plan is data (it round-trips through JSON), so the same object is logged, written next to every
checkpoint as ``freeze_plan.json``, compared on resume and drawn by ``hf-freeze inspect``.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import dataclass, field, fields, replace
from operator import attrgetter
from typing import Any

from torch import nn

from ..errors import PlanMismatchError
from .model_index import ModelIndex, param_tensors, paused_gc, walk_model
from .norm_stats import freeze_norm_statistics, frozen_norms
from .param_decision import (
    DECISION_FIELDS,
    ParamDecision,
    param_shape,
)
from .plan_report import group_rows, render_table
from .rules import AppliedRule, Rule

PLAN_FILE = "freeze_plan.json"
APPLIED_PLAN = "_hf_freeze_applied_plan"  # the model attribute that holds the last plan applied to it
_NAME, _SHAPE, _TRAINABLE = attrgetter("name"), attrgetter("shape"), attrgetter("trainable")


@dataclass
class FreezePlan:
    """The resolved plan. Build it with :meth:`FreezeSpec.resolve` or :func:`freeze_model`."""

    model_class: str
    spec: dict[str, Any]
    params: list[ParamDecision]
    pattern_hits: dict[str, dict[str, int]]
    ties: list[list[str]]
    stacks: list[dict[str, Any]]
    frozen_norms: list[str] = field(default_factory=list)
    stage: int = 0
    # Trainer options that shape the optimizer groups and the unfreeze schedule (layer_lr_decay, unfreeze_*),
    # recorded by FreezingTrainer so a resume can compare them; None: not recorded (the core, older files).
    trainer_options: dict[str, Any] | None = None

    # ---------------------------------------------------------------- totals
    @property
    def total_numel(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def trainable_numel(self) -> int:
        return sum(p.numel for p in self.params if p.trainable)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_numel / self.total_numel if self.total_numel else 0.0

    @property
    def trainable_names(self) -> list[str]:
        return [p.name for p in self.params if p.trainable]

    @property
    def frozen_names(self) -> list[str]:
        return [p.name for p in self.params if not p.trainable]

    def decision(self, name: str) -> ParamDecision:
        for param in self.params:
            if param.name == name or name in param.aliases:
                return param
        raise KeyError(name)

    @property
    def plan_hash(self) -> str:
        """Identifies the resolved trainable set (names, shapes, flags); the spec text does not count."""
        digest = hashlib.sha256()
        for p in self.params:
            digest.update(f"{p.name}|{p.shape}|{int(p.trainable)}\n".encode())
        return digest.hexdigest()[:16]

    # ---------------------------------------------------------------- apply
    def check_fits(self, model: nn.Module, params: dict[str, nn.Parameter] | None = None) -> None:
        """Raise :class:`PlanMismatchError` naming what differs when ``model`` is not the planned one."""
        params = params if params is not None else dict(model.named_parameters())
        if len(params) == len(self.params) and all(
            (param := params.get(d.name)) is not None and param_shape(param) == d.shape for d in self.params
        ):
            return
        actual = {name: param_shape(param) for name, param in params.items()}
        planned = {p.name: p.shape for p in self.params}
        missing = sorted(set(planned) - set(actual))
        extra = sorted(set(actual) - set(planned))
        reshaped = sorted(n for n in set(planned) & set(actual) if planned[n] != actual[n])
        if missing or extra or reshaped:
            details = []
            for label, names in (("missing from the model", missing), ("not in the plan", extra)):
                if names:
                    details.append(f"{len(names)} parameter(s) {label} (e.g. {names[:3]})")
            if reshaped:
                n = reshaped[0]
                details.append(f"{len(reshaped)} with another shape (e.g. {n}: plan {planned[n]}, model {actual[n]})")
            raise PlanMismatchError(
                f"The freeze plan (made for {self.model_class}) does not fit {type(model).__name__}: "
                + "; ".join(details)
                + ". Resolve the plan again for this model, or load the model the plan was made for."
            )

    def apply(self, model: nn.Module) -> nn.Module:
        """Set ``requires_grad`` per the plan and fix the statistics of frozen norm layers.

        Idempotent: applying the same (or an updated) plan again only changes what differs. Walks the
        module tree once. Applied to the model it was resolved from, with the very same parameter tensors
        (and no norm statistics to fix, now or from the last plan applied), it sets the flags in walk order
        without comparing names and shapes again: resolving already read them from these tensors.
        """
        if self._same_tensors(model):
            return model
        with paused_gc():
            index = walk_model(model)
            decisions, tensors = self.params, index.param_tensors
            # The plan lists parameters in the walk's order: compare in bulk, look names up only if that fails.
            if index.param_names != list(map(_NAME, decisions)) or list(map(list, map(_SHAPE, tensors))) != list(
                map(_SHAPE, decisions)
            ):
                self.check_fits(model, index.params)
                tensors = [index.params[d.name] for d in decisions]
            # Setting a flag costs less than reading it first (both go through torch's Python bindings).
            for trainable, param in zip(map(_TRAINABLE, decisions), tensors):
                param.requires_grad = trainable
            freeze_norm_statistics(model, self.frozen_norms, index)
        model.__dict__[APPLIED_PLAN] = self  # what hf-freeze froze, for release_applied_plan (core/api.py)
        return model

    def remember_source(self, model: nn.Module, tensors: list[nn.Parameter]) -> None:
        """Called by resolving: which model and tensor objects (by id, in walk order) the plan was made from."""
        self.__dict__["_source"] = (weakref.ref(model), list(map(id, tensors)))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_source"}  # a weak reference does not pickle

    def _same_tensors(self, model: nn.Module) -> bool:
        """The fast path of :meth:`apply`: set the flags if ``model`` holds exactly the resolved tensors."""
        source = self.__dict__.get("_source")
        previous = model.__dict__.get(APPLIED_PLAN)
        if source is None or source[0]() is not model or self.frozen_norms or getattr(previous, "frozen_norms", None):
            return False
        tensors = param_tensors(model)
        if list(map(id, tensors)) != source[1]:
            return False
        for trainable, param in zip(map(_TRAINABLE, self.params), tensors):
            param.requires_grad = trainable
        model.__dict__[APPLIED_PLAN] = self
        return True

    def with_trainable(self, names: list[str], rule: AppliedRule | Rule | str = Rule.UNFREEZE_STRATEGY) -> FreezePlan:
        """A copy of the plan where ``names`` train, decided by ``rule`` (gradual unfreezing by default)."""
        wanted = set(names)
        decided = AppliedRule.of(rule)
        params = [replace(p, trainable=True, rule=decided) if p.name in wanted else replace(p) for p in self.params]
        plan = replace(self, params=params, stage=self.stage + 1)
        if self.frozen_norms:
            index = ModelIndex({}, {p.name: p for p in params}, {p.name: p.aliases for p in params if p.aliases})
            plan.frozen_norms = frozen_norms(self.frozen_norms, index.names(), {p.name: p.trainable for p in params})
        return plan

    # ---------------------------------------------------------------- report
    def groups(self) -> list[dict[str, Any]]:
        """Rows of the per-group table, in model order: embeddings, layers, other, head."""
        return group_rows(self)

    def summary(self) -> str:
        """One line, PEFT style: trainable / total / percent."""
        return (
            f"trainable params: {self.trainable_numel:,} || all params: {self.total_numel:,} || "
            f"trainable%: {self.trainable_percent:.4f}"
        )

    def table(self) -> str:
        """A readable per-group table (plus pattern hit counts and ties)."""
        return render_table(self)

    def __str__(self) -> str:
        return self.summary() + "\n" + self.table()

    # ---------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "params"}
        data = json.loads(json.dumps(data))  # a deep, JSON-safe copy of the small fields
        # asdict() is 10x slower; the rule is written as its text ("freeze:layer\\.1")
        data["params"] = [{f: getattr(p, f) for f in DECISION_FIELDS} for p in self.params]
        for row in data["params"]:
            row["rule"] = str(row["rule"])
        data["plan_hash"] = self.plan_hash
        data["totals"] = {
            "trainable": self.trainable_numel,
            "total": self.total_numel,
            "trainable_percent": round(self.trainable_percent, 6),
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FreezePlan:
        data = dict(data)
        saved_hash = data.pop("plan_hash", None)
        data.pop("totals", None)
        rules: dict[str, AppliedRule] = {}  # a plan has a handful of distinct rules: read each text once
        decisions = []
        for row in data["params"]:
            text = row["rule"]
            rule = rules.get(text) or rules.setdefault(text, AppliedRule.parse(text))
            decisions.append(ParamDecision(**{**row, "rule": rule}))
        data["params"] = decisions
        plan = cls(**data)
        if saved_hash is not None and saved_hash != plan.plan_hash:
            raise PlanMismatchError(
                f"The freeze plan's hash {saved_hash} does not match its content ({plan.plan_hash}): "
                "the file was edited or corrupted. Delete it and resolve the plan again."
            )
        return plan

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text; with ``indent``, one line per parameter (readable, and fast: the pretty-printing
        encoder is pure Python and takes seconds on 100k parameters)."""
        data = self.to_dict()
        if indent is None:
            return json.dumps(data)
        params = data.pop("params")
        pad = " " * indent
        rows = ",\n".join(pad * 2 + json.dumps(p) for p in params)
        head = json.dumps(data, indent=indent)[: -len("\n}")]
        return f'{head},\n{pad}"params": [\n{rows}\n{pad}]\n}}'

    @classmethod
    def from_json(cls, text: str) -> FreezePlan:
        return cls.from_dict(json.loads(text))

    def save(self, directory: str | os.PathLike) -> str:
        """Write ``freeze_plan.json`` into ``directory``; returns the file path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, PLAN_FILE)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FreezePlan:
        """Read a plan from a ``freeze_plan.json`` file or a directory holding one."""
        if os.path.isdir(path):
            path = os.path.join(path, PLAN_FILE)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            return cls.from_json(text)
        except PlanMismatchError as err:
            raise PlanMismatchError(f"{os.fspath(path)!r}: {err}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # truncated, not JSON, not a plan
            raise PlanMismatchError(
                f"{os.fspath(path)!r} is not a readable freeze plan ({type(err).__name__}: {err}); the file is "
                "truncated or was edited. Restore it from the run that wrote it, or delete it and resolve the plan "
                "again."
            ) from None
