"""``FreezingTrainer``: ``transformers.Trainer`` that resolves, applies, reports and saves a freeze plan.

Thin glue over the core: the plan is resolved once per model (in ``__init__`` or where ``Trainer``
calls ``model_init``), before Accelerate wraps the model; the optimizer, the backend checks, the
checkpoints and the model card read that plan. With no freezing option set it is ``Trainer``.

Choices that keep it a drop-in replacement (``transformers``' own Trainer tests must pass with it):

- With no freezing option (or a plain ``TrainingArguments``) the model is not touched: no
  ``requires_grad`` change, no norm-statistics hook, the optimizer groups are ``Trainer``'s.
- ``freeze_plan.json`` is written (checkpoints and final model), checked on resume and added to the
  model card only when a freezing option is set, so plain runs add no file. A model that arrives with
  frozen parameters (a PEFT model) still gets ``trainer.freeze_plan``, for reporting only.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn
from transformers.trainer_utils import get_last_checkpoint

from . import backend, compat, optim
from .errors import InvalidOptionError, PlanMismatchError
from .plan import PLAN_FILE, FreezePlan
from .spec import FreezeSpec
from .unfreeze import RULE_UNFREEZE, GradualUnfreezeCallback, advance, unfreeze_events

logger = logging.getLogger("hf_freeze")

MODEL_CARD_HEADING = "## Partial fine-tuning (hf-freeze)"


class FreezingTrainer(compat.CompatTrainer):
    """``Trainer`` that trains only what the ``FreezingTrainingArguments`` options leave trainable.

    Example:
        >>> args = FreezingTrainingArguments("out", freeze_embeddings=True, freeze_layers=":8")  # doctest: +SKIP
        >>> trainer = FreezingTrainer(model=model, args=args, train_dataset=ds)                  # doctest: +SKIP
        >>> print(trainer.freeze_plan.summary())                                                  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module | None = None, args: Any = None, *rest: Any, **kwargs: Any) -> None:
        self.freeze_plan: FreezePlan | None = None
        self._initial_plan: FreezePlan | None = None
        self._unfreeze_events: list[list[str]] = []
        self._resume_stage = 0
        self._plan_logged = True
        if model is not None and args is not None:
            self._resolve_freeze_plan(model, args)
        super().__init__(model, args, *rest, **kwargs)
        self._user_optimizer = self.optimizer is not None or self.lr_scheduler is not None
        if not self._plan_logged:
            self._log_freeze_plan()
        if self.unfreeze_strategy != "no":
            self.add_callback(GradualUnfreezeCallback(self))
        if self.optimizer is not None and self.freeze_plan is not None:
            frozen = optim.frozen_in_optimizer(self.optimizer, optim.param_names(self.model))
            if frozen:
                logger.warning(
                    f"The optimizer passed through `optimizers=` holds {len(frozen)} frozen parameter(s) (e.g. "
                    f"{frozen[:3]}). They will not train (no gradient), but optimizers with weight decay or "
                    "momentum can still change them. Build it from `[p for p in model.parameters() if "
                    "p.requires_grad]`, or let FreezingTrainer create it."
                )

    # ------------------------------------------------------------------ the plan
    @property
    def freezing_active(self) -> bool:
        """True when the arguments carry a freezing option (``FreezingTrainingArguments.freezing_enabled``)."""
        return bool(getattr(self.args, "freezing_enabled", False))

    def _resolve_freeze_plan(self, model: nn.Module, args: Any) -> None:
        """Resolve the plan for ``model`` and apply it; without options only record the model's own trainable set."""
        spec: FreezeSpec | None = getattr(args, "freeze_spec", None)
        if spec is not None and getattr(args, "freezing_enabled", False):
            plan = spec.resolve(model)
            plan.apply(model)
        elif any(not p.requires_grad for p in model.parameters()):
            try:  # report-only: the plan mirrors requires_grad and is never applied
                plan = FreezeSpec(freeze_norm_stats=False).resolve(model)
            except Exception as err:  # noqa: BLE001 - reporting must never break a plain Trainer run
                logger.debug(f"No freeze plan recorded for {type(model).__name__}: {err}")
                plan = None
        else:
            plan = None
        self.freeze_plan = self._initial_plan = plan
        self._unfreeze_events = []
        if plan is not None and getattr(args, "unfreeze_strategy", "no") != "no":
            self._unfreeze_events = unfreeze_events(plan, args.unfreeze_layers_per_event)
        self._plan_logged = False
        if getattr(self, "accelerator", None) is not None:
            self._log_freeze_plan()

    def _log_freeze_plan(self) -> None:
        self._plan_logged = True
        if self.freeze_plan is None or not self.accelerator.is_main_process:
            return
        logger.info(self.freeze_plan.summary())
        logger.info("\n" + self.freeze_plan.table())

    def call_model_init(self, trial: Any = None) -> nn.Module:
        model = super().call_model_init(trial)
        self._resolve_freeze_plan(model, self.args)
        return model

    @property
    def unfreeze_strategy(self) -> str:
        return getattr(self.args, "unfreeze_strategy", "no")

    def _writes_plan(self) -> bool:
        return self.freeze_plan is not None and self.freezing_active

    # ------------------------------------------------------------------ accelerator / backend
    def _plan_find_unused_parameters(self) -> bool | None:
        if self.freeze_plan is None or not self.freezing_active or self.args.ddp_find_unused_parameters is not None:
            return None
        find_unused = backend.find_unused_from_plan(self.model, self.freeze_plan, self._checkpointing_on(self.model))
        if self.args.world_size > 1 and self.accelerator.is_main_process:
            logger.info(f"ddp_find_unused_parameters={find_unused} (chosen from the freeze plan)")
        return find_unused

    def _checkpointing_requested(self) -> bool:
        return compat.checkpointing_requested(self.args)

    def _checkpointing_kwargs(self) -> dict[str, Any]:
        return compat.checkpointing_kwargs(self.args)

    def _checkpointing_on(self, model: nn.Module) -> bool:
        return self._checkpointing_requested() or compat.model_checkpointing(model)

    def _preflight(self) -> None:
        """Backend checks and checkpointing hooks, after ``Trainer`` set up checkpointing, before any step."""
        if self.unfreeze_strategy != "no":
            self._check_unfreezing()
        plan = self.freeze_plan
        if plan is None or not self.freezing_active:
            return
        if self.is_fsdp_enabled:
            backend.check_fsdp(self.model, self.accelerator.state.fsdp_plugin)
        checkpointing = self._checkpointing_on(self.model)
        if checkpointing and plan.frozen_names:
            kwargs = self._checkpointing_kwargs()
            backend.check_checkpointing(
                plan, self.args.ddp_find_unused_parameters, True, bool(kwargs.get("use_reentrant", True))
            )
            hooked = backend.make_checkpointed_layers_trainable(self.model, plan)
            logger.debug(f"Inputs of {hooked} require grad under activation checkpointing.")

    def _check_unfreezing(self) -> None:
        """Gradual unfreezing changes the trainable set mid-run: allowed where that is provably safe."""
        strategy = f"`unfreeze_strategy`={self.unfreeze_strategy!r}"
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or self.args.world_size > 1:
            name = "DeepSpeed" if self.is_deepspeed_enabled else "FSDP" if self.is_fsdp_enabled else "DDP"
            raise InvalidOptionError(
                f"{strategy} is not supported under {name} (world size {self.args.world_size}): a layer unfrozen "
                "after the model is wrapped is not synchronised across replicas, so they would silently diverge. "
                "Train on one process, or set unfreeze_strategy='no' and run one `train()` per stage with a "
                "smaller `freeze_layers`."
            )
        if self._user_optimizer:
            raise InvalidOptionError(
                f"{strategy} adds parameter groups to the optimizer and the learning-rate schedule FreezingTrainer "
                "builds; it cannot extend an optimizer/scheduler passed through `optimizers=`. Drop `optimizers=` "
                "or set unfreeze_strategy='no'."
            )
        if self.args.lr_scheduler_type in ("reduce_lr_on_plateau", "greedy"):
            raise InvalidOptionError(
                f"{strategy} needs a step-based learning-rate schedule, not `lr_scheduler_type`="
                f"{self.args.lr_scheduler_type!r}. Use e.g. 'linear' or 'constant', or unfreeze_strategy='no'."
            )
        if not self._unfreeze_events:
            raise InvalidOptionError(
                f"{strategy}: nothing to unfreeze. Gradual unfreezing brings back layers frozen by "
                "`freeze_layers` (top-down) and then `freeze_embeddings`; set one of them."
            )

    def unfreeze_next(self) -> list[str]:
        """Unfreeze the next event's parameters, add them to the optimizer and the LR schedule; returns their names.

        Called by :class:`~hf_freeze.unfreeze.GradualUnfreezeCallback`; a no-op once everything is unfrozen.
        """
        stage = self.freeze_plan.stage
        if stage >= len(self._unfreeze_events):
            return []
        names = self._unfreeze_events[stage]
        self.freeze_plan = self.freeze_plan.with_trainable(names, RULE_UNFREEZE)
        self.freeze_plan.apply(self.model)
        groups = self._param_groups_for(names)
        for group in groups:
            self.optimizer.add_param_group(group)
        self._extend_scheduler(groups)
        if self._checkpointing_on(self.model):
            backend.make_checkpointed_layers_trainable(self.model, self.freeze_plan)
        if self.accelerator.is_main_process:
            logger.info(
                f"Unfreezing stage {self.freeze_plan.stage}/{len(self._unfreeze_events)}: "
                f"{[g['name'] for g in groups]}; {self.freeze_plan.summary()}"
            )
        return names

    def _param_groups_for(self, names: list[str]) -> list[dict[str, Any]]:
        """New optimizer groups for ``names``: Trainer's weight-decay split, lr scaled by ``layer_lr_decay``."""
        params = dict(self.model.named_parameters())
        decay_names = set(self.get_decay_parameter_names(self.model))
        decay = getattr(self.args, "layer_lr_decay", 1.0)
        scales = optim.layer_scales(self.freeze_plan, decay) if decay != 1.0 else {}
        grouped: dict[tuple[str, str], list[nn.Parameter]] = {}
        for name in names:
            label = "decay" if name in decay_names else "no_decay"
            grouped.setdefault((self.freeze_plan.decision(name).group, label), []).append(params[name])
        return [
            {
                "params": members,
                "weight_decay": self.args.weight_decay if label == "decay" else 0.0,
                "lr": self.args.learning_rate * scales.get(group, 1.0),
                "name": f"{group}/{label}",
            }
            for (group, label), members in grouped.items()
        ]

    def _extend_scheduler(self, groups: list[dict[str, Any]]) -> None:
        """Let a ``LambdaLR`` schedule drive the new groups from their own initial lr (None: not built yet)."""
        scheduler = self.lr_scheduler
        if scheduler is None:
            return
        if not hasattr(scheduler, "lr_lambdas"):
            raise InvalidOptionError(
                f"`unfreeze_strategy`={self.unfreeze_strategy!r} cannot extend the learning-rate scheduler "
                f"{type(scheduler).__name__}; use a transformers `lr_scheduler_type` such as 'linear'."
            )
        factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
        for group in groups:
            group["initial_lr"] = group["lr"]
            scheduler.base_lrs.append(group["lr"])
            scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
            group["lr"] = group["initial_lr"] * factor
            scheduler._last_lr.append(group["lr"])

    def _before_training_loop(self, resume_from_checkpoint: str | None) -> None:
        if self.model_init is not None and resume_from_checkpoint is not None:
            self._check_checkpoint_plan(resume_from_checkpoint)  # the model (and plan) came from model_init
        self._preflight()

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model: nn.Module | None = None):
        user_built = self.optimizer is not None
        optimizer = super().create_optimizer(model)
        if user_built or not self.freezing_active:
            return optimizer
        opt_model = self.model if model is None else model
        decay = getattr(self.args, "layer_lr_decay", 1.0)
        if optim.is_standard_grouping(optimizer, opt_model, self.get_decay_parameter_names(opt_model)):
            names = optim.regroup(optimizer, optim.param_names(opt_model), self.freeze_plan, decay)
            for _ in range(self._resume_stage):  # a resumed run rebuilds the groups the events added, in order
                self.unfreeze_next()
            if self.accelerator.is_main_process:
                logger.info("Optimizer groups:\n" + optim.describe(optimizer))
            logger.debug(f"Optimizer group names: {names}")
        elif decay != 1.0 or self.unfreeze_strategy != "no":
            option = f"`layer_lr_decay`={decay}" if decay != 1.0 else f"`unfreeze_strategy`={self.unfreeze_strategy!r}"
            raise InvalidOptionError(
                f"{option} needs Trainer's standard parameter groups, but `optim`={self.args.optim!r} (or "
                "`optimizer_cls_and_kwargs`) groups parameters its own way. Drop the option with this optimizer, "
                "or use a standard one such as adamw_torch."
            )
        return optimizer

    # ------------------------------------------------------------------ save / resume
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save and self._writes_plan():
            self.freeze_plan.save(output_dir if output_dir is not None else self.args.output_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir) or True
        self._resume_stage = 0
        if self._initial_plan is not None and self.freeze_plan is not self._initial_plan:
            self.freeze_plan = self._initial_plan  # gradual unfreezing starts again from stage 0
            self.freeze_plan.apply(self.model)
        if isinstance(resume_from_checkpoint, str) and self.model_init is None:
            self._check_checkpoint_plan(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _check_checkpoint_plan(self, checkpoint: str) -> None:
        """The checkpoint's ``freeze_plan.json`` must describe this model and these options.

        Without a freezing option a mismatch is only a warning: the run must behave as ``Trainer``.
        """
        try:
            self._compare_checkpoint_plan(checkpoint)
        except PlanMismatchError as err:
            if self.freezing_active:
                raise
            logger.warning(str(err))

    def _compare_checkpoint_plan(self, checkpoint: str) -> None:
        current = self.freeze_plan if self._writes_plan() else None
        path = os.path.join(checkpoint, PLAN_FILE)
        if not os.path.isfile(path):
            if current is not None and current.frozen_names:
                raise PlanMismatchError(
                    f"The checkpoint {checkpoint!r} has no {PLAN_FILE} (it was not trained with these freezing "
                    f"options), but this run freezes {len(current.frozen_names)} parameter(s). Resume with the "
                    "options it was trained with, or start a new run from its weights instead of resuming."
                )
            return
        saved = FreezePlan.load(path)
        if current is not None and saved.stage and self._unfreeze_events:
            current = advance(current, self._unfreeze_events, saved.stage)
        if current is None:
            if saved.frozen_names:
                raise PlanMismatchError(
                    f"The checkpoint {checkpoint!r} was trained with {len(saved.frozen_names)} frozen parameter(s) "
                    f"(spec {_set_options(saved.spec)}) but this run freezes nothing. Pass the same freezing "
                    "options to resume it."
                )
            return
        if saved.plan_hash != current.plan_hash or saved.stage != current.stage:
            raise PlanMismatchError(
                f"The freeze plan saved in {checkpoint!r} does not match this model and options: "
                + describe_plan_difference(saved, current)
                + ". Resume with the options the checkpoint was trained with."
            )
        self._resume_stage = saved.stage

    # ------------------------------------------------------------------ model card
    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero() or not self._writes_plan():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as handle:
            card = handle.read()
        if MODEL_CARD_HEADING in card:
            return
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("\n" + model_card_section(self.freeze_plan))


def _set_options(spec: dict[str, Any]) -> dict[str, Any]:
    defaults = FreezeSpec().to_dict()
    return {k: v for k, v in spec.items() if defaults.get(k) != v}


def describe_plan_difference(saved: FreezePlan, current: FreezePlan) -> str:
    """What differs between two plans, for an error message: options, parameters, trainable flags."""
    parts = []
    changed = {k for k in set(saved.spec) | set(current.spec) if saved.spec.get(k) != current.spec.get(k)}
    if changed:
        diffs = [f"{k}: saved {saved.spec.get(k)!r}, now {current.spec.get(k)!r}" for k in sorted(changed)]
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
    if saved.stage != current.stage:
        parts.append(f"gradual-unfreezing stage saved {saved.stage}, possible now {current.stage}")
    if not parts:
        parts.append(f"plan hash saved {saved.plan_hash}, now {current.plan_hash} (shapes differ)")
    return "; ".join(parts)


def model_card_section(plan: FreezePlan) -> str:
    """Markdown for the model card: what was frozen and how to reproduce it."""
    options = _set_options(plan.spec)
    return (
        f"{MODEL_CARD_HEADING}\n\n"
        f"Only part of the model was trained. {plan.summary()}\n\n"
        f"Freezing options: `{options}` (plan hash `{plan.plan_hash}`, full plan in `{PLAN_FILE}`).\n\n"
        "```\n" + plan.table() + "\n```\n"
    )
