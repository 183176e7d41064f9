"""The resume check: a checkpoint's ``freeze_plan.json`` against the run that resumes it.

A resumed run must rebuild the optimizer the checkpoint's state belongs to, so every option that
changes the trainable set or the optimizer groups has to be the same: the ``FreezeSpec`` options,
the trainer options of :data:`~hf_freeze.training.arguments.TRAINER_PLAN_OPTIONS`, and their results (the
resolved trainable set, the frozen norm layers, the unfreeze stage). A difference is a
:class:`PlanMismatchError` that names the option with its saved and current values, raised before any
step (otherwise torch fails later with "a different number of parameter groups", or training goes
on with another plan). Without a ``freeze_plan.json`` the checkpoint counts as trained with every
option at its default, which is how a plain run over a plain checkpoint stays ``Trainer``.
:func:`check_checkpoint` is the whole check as ``FreezingTrainer`` runs it before the first step.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from ..core.plan import PLAN_FILE, FreezePlan
from ..core.spec import FreezeSpec
from ..errors import PlanMismatchError
from .unfreezing import advance

logger = logging.getLogger("hf_freeze")

TRAINER_STATE_FILE = "trainer_state.json"  # the last file Trainer writes into a checkpoint folder
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")

# Decides only whether a pattern without hits is an error or a warning: nothing about training.
_NOT_COMPARED = ("freeze_strict",)


def trainer_option_defaults() -> dict[str, Any]:
    from .arguments import TRAINER_PLAN_OPTIONS, FreezingTrainingArguments

    return {f.name: f.default for f in fields(FreezingTrainingArguments) if f.name in TRAINER_PLAN_OPTIONS}


def set_options(plan: FreezePlan) -> dict[str, Any]:
    """The options of ``plan`` that differ from their defaults (spec and recorded trainer options)."""
    defaults = {**FreezeSpec().to_dict(), **trainer_option_defaults()}
    options = {**plan.spec, **(plan.trainer_options or {})}
    return {k: v for k, v in options.items() if not _same(k, defaults.get(k), v)}


def _same(option: str, a: Any, b: Any) -> bool:
    if option == "freeze_layers" and a is not None and b is not None:
        return str(a).strip() == str(b).strip()  # 2 from YAML, "2" from a flag
    return a == b


def option_differences(saved: FreezePlan, current: FreezePlan) -> list[str]:
    """``"<option>: saved <value>, now <value>"`` for each compared option that differs."""
    pairs = [(saved.spec, current.spec)]
    if saved.trainer_options is not None:
        defaults = trainer_option_defaults()  # an option recorded since the checkpoint was written had its default
        pairs.append(({**defaults, **saved.trainer_options}, current.trainer_options or defaults))
    diffs = []
    for old, new in pairs:
        for key in sorted(set(old) | set(new)):
            if key not in _NOT_COMPARED and not _same(key, old.get(key), new.get(key)):
                diffs.append(f"{key}: saved {old.get(key)!r}, now {new.get(key)!r}")
    return diffs


def describe_plan_difference(saved: FreezePlan, current: FreezePlan) -> str:
    """What differs between two plans, for an error message: options, parameters, trainable flags."""
    parts = []
    diffs = option_differences(saved, current)
    if diffs:
        parts.append("options " + ", ".join(diffs))
    saved_flags = {p.name: p.trainable for p in saved.params}
    now_flags = {p.name: p.trainable for p in current.params}
    missing, extra = sorted(set(saved_flags) - set(now_flags)), sorted(set(now_flags) - set(saved_flags))
    if missing:
        parts.append(f"{len(missing)} saved parameter(s) not in the model (e.g. {missing[:3]})")
    if extra:
        parts.append(f"{len(extra)} model parameter(s) not in the saved plan (e.g. {extra[:3]})")
    flipped = sorted(n for n in set(saved_flags) & set(now_flags) if saved_flags[n] != now_flags[n])
    if flipped:
        examples = ", ".join(f"{n} (saved {'trainable' if saved_flags[n] else 'frozen'})" for n in flipped[:3])
        parts.append(f"{len(flipped)} parameter(s) with another trainable flag, e.g. {examples}")
    if saved.frozen_norms != current.frozen_norms:
        parts.append(
            f"norm layers with fixed statistics: saved {len(saved.frozen_norms)}, now {len(current.frozen_norms)}"
        )
    if saved.stage != current.stage:
        parts.append(f"gradual-unfreezing stage saved {saved.stage}, possible now {current.stage}")
    if not parts:
        parts.append(f"plan hash saved {saved.plan_hash}, now {current.plan_hash} (shapes differ)")
    return "; ".join(parts)


def check_resume(checkpoint: str, saved: FreezePlan | None, current: FreezePlan | None) -> list[str]:
    """Raise :class:`PlanMismatchError` when ``current`` cannot resume ``checkpoint``; return warnings.

    ``saved`` is the checkpoint's plan (None: it has no ``freeze_plan.json``); ``current`` is this
    run's plan, advanced to the saved unfreeze stage (None: this run sets no freezing option).
    """
    if saved is None:
        if current is None:
            return []
        changed = set_options(current) if current.trainer_options is not None else {}
        shaping = {k: v for k, v in changed.items() if k in trainer_option_defaults()}
        if current.frozen_names or shaping:
            frozen = f"freezes {len(current.frozen_names)} parameter(s) and " if current.frozen_names else ""
            raise PlanMismatchError(
                f"The checkpoint {checkpoint!r} has no {PLAN_FILE} (it was trained without freezing options), "
                f"but this run {frozen}sets {changed}. Resume it without these options, or start a new run from "
                "its weights instead of resuming."
            )
        return []
    if current is None:
        raise PlanMismatchError(
            f"The checkpoint {checkpoint!r} was trained with the freezing options {set_options(saved)} (its "
            f"{PLAN_FILE}), but this run sets none, so it would rebuild another optimizer. Pass the same options "
            "(FreezingTrainingArguments, flags or YAML keys of the same names) to resume it."
        )
    if (
        option_differences(saved, current)
        or saved.plan_hash != current.plan_hash
        or saved.stage != current.stage
        or saved.frozen_norms != current.frozen_norms
    ):
        raise PlanMismatchError(
            f"The freeze plan saved in {checkpoint!r} does not match this model and options: "
            + describe_plan_difference(saved, current)
            + ". Resume with the options the checkpoint was trained with."
        )
    if saved.trainer_options is None and current.trainer_options is not None:
        return [
            f"The {PLAN_FILE} of {checkpoint!r} predates the recording of {sorted(current.trainer_options)}, so "
            "they cannot be checked; resume with the values the checkpoint was trained with."
        ]
    return []


def saved_plan(checkpoint: str) -> FreezePlan | None:
    """The ``freeze_plan.json`` of ``checkpoint``, or None when it has none (a plain run wrote it)."""
    path = os.path.join(checkpoint, PLAN_FILE)
    return FreezePlan.load(path) if os.path.isfile(path) else None


def check_checkpoint(
    checkpoint: str, current: FreezePlan | None, events: Sequence[list[str]] = (), warn: bool = True
) -> int:
    """Check that this run can resume ``checkpoint``; return the gradual-unfreezing stage to resume at.

    ``current`` is this run's stage-0 plan (None: it sets no freezing option) and ``events`` its
    unfreezing schedule, so the plan is compared at the checkpoint's stage. Raises
    :class:`PlanMismatchError` (see :func:`check_resume`); logs its warnings when ``warn``.
    """
    saved = saved_plan(checkpoint)
    if current is not None and saved is not None and saved.stage:
        current = advance(current, list(events), saved.stage)
    for warning in check_resume(checkpoint, saved, current):
        if warn:
            logger.warning(warning)
    return saved.stage if saved is not None and current is not None else 0


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` that was written to the end, or None.

    ``Trainer`` writes a checkpoint folder in place and ``trainer_state.json`` last, while
    ``get_last_checkpoint`` only compares folder names: a run killed while saving leaves a newer,
    half-written folder that ``resume_from_checkpoint=True`` would pick (and fail on, or resume from
    a model without its optimizer state). Folders without ``trainer_state.json`` are skipped, with a
    warning each.
    """
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT.fullmatch(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    for _, path in sorted(found, reverse=True):
        if os.path.isfile(os.path.join(path, TRAINER_STATE_FILE)):
            return path
        logger.warning(f"Skipping {path}: it has no {TRAINER_STATE_FILE}, so it was not written to the end.")
    return None
