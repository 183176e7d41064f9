"""Gradual unfreezing (ULMFiT): which frozen layers each event unfreezes, when, and the callback that does it.

Only what the shortcuts froze comes back: layers frozen by ``freeze_layers`` (top-down, across all
stacks by layer index) and then the embedding block frozen by ``freeze_embeddings``. Parameters frozen
by a ``freeze`` pattern, or that arrived frozen (a PEFT base model), stay frozen.
The schedule is data (a list of name lists) derived from the stage-0 plan, so a resumed run replays
exactly the events the interrupted run went through.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from torch import nn
from transformers import TrainerCallback

from ..core.param_decision import GROUP_EMBEDDINGS
from ..core.plan import FreezePlan
from ..core.rules import SHORTCUT_RULES, Rule
from ..errors import InvalidOptionError
from . import backend
from .late_grad_sync import LateGradSync

logger = logging.getLogger("hf_freeze")

# (plan, names an event brings back) -> their optimizer groups; see param_groups.param_groups
_UNSUPPORTED = {
    "DeepSpeed": "the ZeRO optimizer builds its partitions of optimizer state and its gradient reduction from the "
    "parameters that require grad at `deepspeed.initialize` and has no `add_param_group`, so a parameter "
    "unfrozen later would get neither.",
    "FSDP": "FSDP flattens (FSDP1) or shards (FSDP2) parameters and fixes their mixed-precision and gradient "
    "reduction at the wrap; with a mixed-precision policy, changing requires_grad after the first forward makes "
    "the next backward fail (PyTorch #186998; tests/test_fsdp2_unfreeze.py).",
}
GroupBuilder = Callable[[FreezePlan, list[str]], list[dict[str, Any]]]


def unfreeze_events(plan: FreezePlan, layers_per_event: int) -> list[list[str]]:
    """Parameter names per event: ``layers_per_event`` frozen layers at a time from the top, then the embeddings."""
    units: dict[tuple[int, int], list[str]] = {}
    stack_order = {s["path"]: i for i, s in enumerate(plan.stacks)}
    embeddings = []
    for p in plan.params:
        if p.trainable or p.rule.kind not in SHORTCUT_RULES:
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
        plan = plan.with_trainable(names, Rule.UNFREEZE_STRATEGY)
    return plan


def step_interval(unfreeze_steps: float, max_steps: int) -> int:
    """Steps between events; a value in (0, 1) is a fraction of the total steps (as ``save_steps``)."""
    if unfreeze_steps < 1:
        return max(1, math.ceil(unfreeze_steps * max_steps))
    return int(unfreeze_steps)


def extend_scheduler(scheduler: Any, groups: list[dict[str, Any]]) -> None:
    """Make a ``LambdaLR``-style schedule drive optimizer groups added after it was built.

    Why: torch schedulers keep one base rate and one lambda per group, fixed at construction, and zip
    them with ``optimizer.param_groups`` at every step; a group added later is either ignored or crashes
    the next ``step()`` ("zip() argument 2 is shorter"). Each new group gets its own base rate (its
    ``lr``, already scaled by ``layer_lr_decay``), the first group's lambda, and starts at the current
    factor; ``_last_lr`` grows with it because ``get_last_lr()``, logging and ``state_dict()`` read it.
    ``None`` (the scheduler is built after the optimizer, from all its groups) needs nothing.
    """
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps it
    if scheduler is None:
        return
    if not hasattr(scheduler, "lr_lambdas"):
        raise InvalidOptionError(
            f"`unfreeze_strategy` cannot extend the learning-rate scheduler {type(scheduler).__name__}; use a "
            "transformers `lr_scheduler_type` such as 'linear', or unfreeze_strategy='no'."
        )
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in groups:
        group["initial_lr"] = group["lr"]
        scheduler.base_lrs.append(group["lr"])
        scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
        group["lr"] = group["initial_lr"] * factor
        scheduler._last_lr.append(group["lr"])


class GradualUnfreezing(TrainerCallback):
    """Every ``unfreeze_steps`` optimizer steps (or epochs) unfreezes the next event's parameters and adds
    them to the optimizer and LR schedule it is handed (``on_step_end``/``on_epoch_end`` kwargs).

    It owns the schedule: the events (from the stage-0 plan), the current plan (``plan.stage`` is the
    stage) and how new groups are built (``group_builder``, set when the optimizer is built).

    Under DDP (``grad_sync``, set by the trainer on more than one process) the parameters an event brings
    back are not in DDP's gradient buckets, which are fixed at the wrap: :class:`.late_grad_sync.LateGradSync`
    averages their gradients across ranks before clipping, so replicas stay identical and the bytes sent per
    step follow the trainable set. A resumed run replays its stage when the optimizer is built, before the
    wrap, so DDP itself covers those parameters. DeepSpeed and FSDP are refused (:meth:`check`).
    """

    def __init__(self, strategy: str, every: float, layers_per_event: int) -> None:
        self.strategy, self.every, self.layers_per_event = strategy, every, layers_per_event
        self.initial: FreezePlan | None = None
        self.plan: FreezePlan | None = None
        self.events: list[list[str]] = []
        self.resume_stage = 0
        self.group_builder: GroupBuilder | None = None
        self.grad_sync: LateGradSync | None = None

    def start(self, plan: FreezePlan) -> None:
        """A new stage-0 plan (a new model): derive the events from it."""
        self.initial = self.plan = plan
        self.events = unfreeze_events(plan, self.layers_per_event)
        self.resume_stage = 0

    def restart(self, model: nn.Module) -> None:
        """Back to stage 0 for a new ``train()`` call (the model gets the stage-0 flags again)."""
        if self.plan is not self.initial:
            self.plan = self.initial
            self.plan.apply(model)
        self.resume_stage = 0

    def check(self, backend_name: str | None, world_size: int, user_optimizer: bool, scheduler_type: str) -> None:
        """Refuse, before any step, the setups where a live change of the trainable set is unsafe."""
        strategy = f"`unfreeze_strategy`={self.strategy!r}"
        if backend_name is not None:
            raise InvalidOptionError(
                f"{strategy} is not supported under {backend_name}: "
                + _UNSUPPORTED.get(backend_name, "its sharded state is fixed when the model is wrapped.")
                + " Set unfreeze_strategy='no' and run one `train()` per stage with a smaller `freeze_layers` "
                "(resuming each from the last), or train with DDP, which supports it."
            )
        if user_optimizer:
            raise InvalidOptionError(
                f"{strategy} adds parameter groups to the optimizer and the learning-rate schedule FreezingTrainer "
                "builds; it cannot extend an optimizer/scheduler passed through `optimizers=`. Drop `optimizers=` "
                "or set unfreeze_strategy='no'."
            )
        if scheduler_type in ("reduce_lr_on_plateau", "greedy"):
            raise InvalidOptionError(
                f"{strategy} needs a step-based learning-rate schedule, not `lr_scheduler_type`="
                f"{scheduler_type!r}. Use e.g. 'linear' or 'constant', or unfreeze_strategy='no'."
            )
        if not self.events:
            raise InvalidOptionError(
                f"{strategy}: nothing to unfreeze. Gradual unfreezing brings back layers frozen by "
                "`freeze_layers` (top-down) and then `freeze_embeddings`; set one of them."
            )

    def attach(self, model: nn.Module, optimizer: Any, group_builder: GroupBuilder, checkpointing: bool) -> None:
        """The optimizer was just built: remember how groups are made and replay a resumed run's stage,
        so the optimizer has the checkpoint's groups before its state is loaded."""
        self.group_builder = group_builder
        for _ in range(self.resume_stage - self.plan.stage):  # before the DDP wrap: DDP itself syncs them
            self.unfreeze_next(model, optimizer, None, checkpointing, synced_by_ddp=True)

    def unfreeze_next(
        self, model: nn.Module, optimizer: Any, lr_scheduler: Any, checkpointing: bool, synced_by_ddp: bool = False
    ) -> list[dict[str, Any]]:
        """Unfreeze the next event's parameters; returns their new optimizer groups ([] once all are back)."""
        if self.plan.stage >= len(self.events):
            return []
        names = self.events[self.plan.stage]
        self.plan = self.plan.with_trainable(names, Rule.UNFREEZE_STRATEGY)
        self.plan.apply(model)
        groups = self.group_builder(self.plan, names)
        for group in groups:
            optimizer.add_param_group(group)
        extend_scheduler(lr_scheduler, groups)
        if checkpointing:
            backend.make_checkpointed_layers_trainable(model, self.plan)
        if self.grad_sync is not None and not synced_by_ddp:
            self.grad_sync.add(model.named_parameters(), names)
        return groups

    def _event(self, args: Any, state: Any, model: nn.Module, optimizer: Any, lr_scheduler: Any) -> None:
        groups = self.unfreeze_next(model, optimizer, lr_scheduler, backend.checkpointing_on(args, model))
        if groups and state.is_world_process_zero:
            names = self.events[self.plan.stage - 1]
            traffic = ""
            if self.grad_sync is not None:
                trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
                traffic = f"; all-reduce per optimizer step from now on: {trainable:,} bytes (the trainable set)"
            logger.info(
                f"Unfreezing stage {self.plan.stage}/{len(self.events)}: {len(names)} parameter tensor(s) in "
                f"{[g['name'] for g in groups]}; {self.plan.summary()}{traffic}"
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.grad_sync is not None:
            self.grad_sync.remove()  # no hook outlives the run

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self.strategy == "steps" and state.global_step % step_interval(self.every, state.max_steps) == 0:
            self._event(args, state, model, optimizer, lr_scheduler)

    def on_epoch_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        epoch = round(state.epoch or 0)
        if self.strategy == "epoch" and epoch and epoch % int(self.every) == 0:
            self._event(args, state, model, optimizer, lr_scheduler)
