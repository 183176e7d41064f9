"""``FreezingTrainer``: ``transformers.Trainer`` that resolves, applies, reports and saves a freeze plan.

Glue over the core and the helpers beside it: the plan is resolved and applied once per model (in
``__init__`` or where ``Trainer`` calls ``model_init``, before Accelerate wraps it) by
:func:`.arguments.resolve_and_apply`; the optimizer groups and their logged rates come from
:mod:`.param_groups`, gradual unfreezing is the :class:`.unfreezing.GradualUnfreezing` callback, the
checks before training live in :mod:`.backend`, the resume check in :mod:`.resume` and the model-card
text in :mod:`.model_card`. With no freezing option set it is ``Trainer``:

- With no freezing option (or a plain ``TrainingArguments``) the model is not touched: no
  ``requires_grad`` change, no norm-statistics hook, the optimizer groups are ``Trainer``'s.
- ``freeze_plan.json`` is written (checkpoints and final model), checked on resume and added to the
  model card only when a freezing option is set, so plain runs add no file. A model that arrives with
  frozen parameters (a PEFT model) still gets ``trainer.freeze_plan``, for reporting only.

Private ``Trainer`` methods are overridden only where no public hook exists, and only in two places:
:class:`.compat.CompatTrainer` (``_wrap_model``: DDP's ``find_unused_parameters`` from the plan, on
transformers 4.57 and 5.x) and :class:`.checkpointing.PartialCheckpointMixin` (``_save_checkpoint``,
``_load_from_checkpoint``, ``_load_best_model``: ``save_only_trainable``). ``tests/test_compat.py``
fails when one of them disappears from ``Trainer`` or when another one is overridden.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ..core import adapters
from ..core.plan import FreezePlan
from . import backend, compat, feature_caching
from . import param_groups as optim
from .arguments import resolve_and_apply
from .checkpointing import PartialCheckpointMixin
from .late_grad_sync import LateGradSync
from .model_card import add_to_model_card
from .resume import check_checkpoint, last_complete_checkpoint
from .unfreezing import GradualUnfreezing

logger = logging.getLogger("hf_freeze")


class FreezingTrainer(PartialCheckpointMixin, compat.CompatTrainer):
    """``Trainer`` that trains only what the ``FreezingTrainingArguments`` options leave trainable.

    Example:
        >>> args = FreezingTrainingArguments("out", freeze_embeddings=True, freeze_layers=":8")  # doctest: +SKIP
        >>> trainer = FreezingTrainer(model=model, args=args, train_dataset=ds)                  # doctest: +SKIP
        >>> print(trainer.freeze_plan.summary())                                                  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module | None = None, args: Any = None, *rest: Any, **kwargs: Any) -> None:
        self._plan: FreezePlan | None = None  # the stage-0 plan; the callback holds later stages
        strategy = getattr(args, "unfreeze_strategy", "no")
        self._unfreezing = (
            None
            if strategy == "no"
            else GradualUnfreezing(strategy, args.unfreeze_steps, args.unfreeze_layers_per_event)
        )
        self._unsaved: list[str] = []
        self._plan_logged = True
        self._resume_checkpoint: str | None = None
        self._rate_log: optim.LayerRateLog | None = None  # set when layer_lr_decay split the optimizer groups
        self._feature_cache = None  # installed for one train() call (cache_frozen_features)
        if model is not None and args is not None:
            self._resolve_freeze_plan(model, args)
        super().__init__(model, args, *rest, **kwargs)
        self._user_optimizer = self.optimizer is not None or self.lr_scheduler is not None
        if not self._plan_logged:
            self._log_freeze_plan()
        if self._unfreezing is not None:
            self.add_callback(self._unfreezing)
        if self.optimizer is not None and self.freeze_plan is not None:
            optim.warn_frozen_in_optimizer(self.optimizer, self.model)

    # ------------------------------------------------------------------ the plan
    @property
    def freeze_plan(self) -> FreezePlan | None:
        """The plan at the current gradual-unfreezing stage (None: nothing frozen and no option set)."""
        if self._unfreezing is not None and self._unfreezing.plan is not None:
            return self._unfreezing.plan
        return self._plan

    @property
    def freezing_enabled(self) -> bool:
        """True when the arguments set a freezing option (``FreezingTrainingArguments.freezing_enabled``)."""
        return bool(getattr(self.args, "freezing_enabled", False))

    def _resolve_freeze_plan(self, model: nn.Module, args: Any) -> None:
        """Resolve and apply the plan for ``model`` (:func:`.arguments.resolve_and_apply`), then log it."""
        plan = self._plan = resolve_and_apply(model, args)
        if self._unfreezing is not None and plan is not None:
            self._unfreezing.start(plan)
            adapters.check_saved(model, [name for event in self._unfreezing.events for name in event])
        self._unsaved = adapters.unsaved_trainable(model, plan.trainable_names) if plan is not None else []
        self._plan_logged = False
        if getattr(self, "accelerator", None) is not None:
            self._log_freeze_plan()

    def _log_freeze_plan(self) -> None:
        self._plan_logged = True
        if self.freeze_plan is None or not self.accelerator.is_main_process:
            return
        logger.info(self.freeze_plan.summary())
        logger.info("\n" + self.freeze_plan.table())
        if self._unsaved:  # only without freezing options: with them the plan refused this already
            logger.warning(adapters.unsaved_warning(self._unsaved))

    def call_model_init(self, trial: Any = None) -> nn.Module:
        model = super().call_model_init(trial)
        self._resolve_freeze_plan(model, self.args)
        if getattr(self, "is_in_train", False):  # inside train(): the new model is checked and prepared before the wrap
            self._before_training(model)
        return model

    def _writes_plan(self) -> bool:
        return self.freeze_plan is not None and self.freezing_enabled

    # ------------------------------------------------------------------ checks before training
    def _plan_find_unused_parameters(self) -> bool | None:
        """DDP's ``find_unused_parameters`` from the plan (:func:`.backend.ddp_find_unused`); None: no option set."""
        if not self._writes_plan():
            return None
        return backend.ddp_find_unused(self.model, self.freeze_plan, self.args, log=self.accelerator.is_main_process)

    def _before_training(self, model: nn.Module) -> None:
        """Resume check, backend checks and checkpointing hooks: after ``model_init``, before the wrap and any step."""
        if self._resume_checkpoint is not None:
            self._check_checkpoint_plan(self._resume_checkpoint)
        if self._unfreezing is not None:
            self._check_unfreezing()
        self.check_partial_checkpointing()  # save_only_trainable: refusals and the fingerprint (.checkpointing)
        self._feature_cache = feature_caching.install(self, model)  # None unless cache_frozen_features
        if self.freeze_plan is None or not self.freezing_enabled:
            return
        if self.is_fsdp_enabled:
            backend.check_fsdp(model, self.accelerator.state.fsdp_plugin)
        backend.prepare_checkpointing(model, self.freeze_plan, self.args)

    def _check_unfreezing(self) -> None:
        """Gradual unfreezing changes the trainable set mid-run: allowed where that is provably safe."""
        name = "DeepSpeed" if self.is_deepspeed_enabled else "FSDP" if self.is_fsdp_enabled else None
        self._unfreezing.check(name, self.args.world_size, self._user_optimizer, self.args.lr_scheduler_type)
        # DDP: what an event unfreezes after the wrap is averaged across ranks by LateGradSync
        self._unfreezing.grad_sync = LateGradSync() if self.args.world_size > 1 else None

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model: nn.Module | None = None):
        user_built = self.optimizer is not None
        optimizer = super().create_optimizer(model)
        if not user_built and self.freezing_enabled:  # the plan's groups (.param_groups.regroup)
            opt_model = self.model if model is None else model
            decay_names, main = self.get_decay_parameter_names(opt_model), self.accelerator.is_main_process
            base_lr = optim.regroup(
                optimizer, opt_model, self.freeze_plan, decay_names, self.args, self._unfreezing, main
            )
            self._rate_log = optim.LayerRateLog(base_lr) if base_lr is not None else None
        return optimizer

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """With ``layer_lr_decay``, ``learning_rate`` is the base rate and the first log holds each group's
        rate (:class:`.param_groups.LayerRateLog`)."""
        if self._rate_log is not None and self.optimizer is not None:
            self._rate_log.rewrite(logs, self.optimizer, self.lr_scheduler)
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ save / resume
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save and self._writes_plan():
            self.freeze_plan.save(output_dir if output_dir is not None else self.args.output_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir) or True
        self._resume_checkpoint = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        if self._unfreezing is not None:
            self._unfreezing.restart(self.model)  # gradual unfreezing starts again from stage 0
        if self.model_init is None:  # with model_init, call_model_init does it for the new model
            self._before_training(self.model)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            feature_caching.uninstall(self, self._feature_cache)
            self._feature_cache = None

    def _check_checkpoint_plan(self, checkpoint: str) -> None:
        """The checkpoint's ``freeze_plan.json`` must match this model and these options (:mod:`.resume`)."""
        events = self._unfreezing.events if self._unfreezing is not None else []
        current = self.freeze_plan if self._writes_plan() else None
        stage = check_checkpoint(checkpoint, current, events, warn=self.accelerator.is_main_process)
        if self._unfreezing is not None:  # replayed when the optimizer is built, before its state loads
            self._unfreezing.resume_stage = stage

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero() and self._writes_plan():
            add_to_model_card(self.args.output_dir, self.freeze_plan)
