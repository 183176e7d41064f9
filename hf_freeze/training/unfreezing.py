"""Gradual unfreezing (ULMFiT): which frozen layers each event unfreezes, and when events happen.

Only what the shortcuts froze comes back: layers frozen by ``freeze_layers`` (top-down, across all
stacks by layer index) and then the embedding block frozen by ``freeze_embeddings``. Parameters frozen
by a ``freeze`` pattern, or that arrived frozen (a PEFT base model), stay frozen.
The schedule is data (a list of name lists) derived from the stage-0 plan, so a resumed run replays
exactly the events the interrupted run went through.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from ..core.plan import GROUP_EMBEDDINGS, FreezePlan

RULE_UNFREEZE = "unfreeze_strategy"
_SHORTCUT_RULES = ("freeze_layers", "freeze_embeddings")


def unfreeze_events(plan: FreezePlan, layers_per_event: int) -> list[list[str]]:
    """Parameter names per event: ``layers_per_event`` frozen layers at a time from the top, then the embeddings."""
    units: dict[tuple[int, int], list[str]] = {}
    stack_order = {s["path"]: i for i, s in enumerate(plan.stacks)}
    embeddings = []
    for p in plan.params:
        if p.trainable or p.rule not in _SHORTCUT_RULES:
            continue
        if p.layer is not None and p.stack is not None:
            units.setdefault((p.layer, stack_order.get(p.stack, 0)), []).append(p.name)
        elif p.group == GROUP_EMBEDDINGS:
            embeddings.append(p.name)
    ordered = [units[key] for key in sorted(units, key=lambda k: (-k[0], k[1]))]
    events = [sum(ordered[i : i + layers_per_event], []) for i in range(0, len(ordered), layers_per_event)]
    if embeddings:
        events.append(embeddings)
    return events


def advance(plan: FreezePlan, events: list[list[str]], stage: int) -> FreezePlan:
    """The plan after the first ``stage`` events (``plan`` is the stage-0 plan)."""
    for names in events[plan.stage : stage]:
        plan = plan.with_trainable(names, RULE_UNFREEZE)
    return plan


def step_interval(unfreeze_steps: float, max_steps: int) -> int:
    """Steps between events; a value in (0, 1) is a fraction of the total steps (as ``save_steps``)."""
    if unfreeze_steps < 1:
        return max(1, math.ceil(unfreeze_steps * max_steps))
    return int(unfreeze_steps)


class GradualUnfreezeCallback(TrainerCallback):
    """Calls ``trainer.unfreeze_next()`` every ``unfreeze_steps`` optimizer steps or epochs."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if args.unfreeze_strategy == "steps":
            interval = step_interval(args.unfreeze_steps, state.max_steps)
            if state.global_step % interval == 0:
                self.trainer.unfreeze_next()

    def on_epoch_end(self, args, state, control, **kwargs):
        if args.unfreeze_strategy == "epoch":
            epoch = round(state.epoch or 0)
            if epoch and epoch % int(args.unfreeze_steps) == 0:
                self.trainer.unfreeze_next()
