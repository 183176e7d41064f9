"""``save_only_trainable``: ``Trainer`` checkpoints that hold only what trained.

:class:`PartialCheckpointMixin` sits before ``Trainer`` in ``FreezingTrainer``'s bases and routes the
model part of every ``checkpoint-N`` folder through the framework-free core
(:mod:`hf_freeze.core.partial_checkpoint`): the trainable tensors (``trainable_state.safetensors``),
the manifest with the fingerprint of the frozen weights, ``freeze_plan.json``, the config, the
tokenizer and ``training_args.bin``. Optimizer, scheduler, RNG and trainer state are written by
``Trainer`` as usual. The final ``save_model`` (outside a checkpoint) still writes the full model.

It overrides three private ``Trainer`` methods (``tests/test_checkpointing.py`` fails loudly if
transformers renames or removes one):

- ``_save_checkpoint``: marks the ``save_model`` call it makes as a checkpoint save;
- ``_load_from_checkpoint``: a folder with a partial-checkpoint manifest is loaded onto the model the
  trainer holds, after the fingerprint check (another base model: ``PlanMismatchError`` before any
  step); other folders go to ``Trainer``;
- ``_load_best_model``: the same for ``load_best_model_at_end``.

Decisions: DeepSpeed and FSDP are refused before training (DeepSpeed writes its own full module state
into every checkpoint and loads it back on resume, bypassing this path; ZeRO-3 and FSDP shard the
tensors, and ``Trainer`` cannot run either on CPU to test a gather). Under DDP the main process
writes and every process loads. A PEFT model is left to PEFT: ``Trainer`` already writes only its
adapter (``adapter_model.safetensors``) into checkpoints, so nothing else is written (logged once).
With gradual unfreezing each checkpoint holds what is trainable at its stage; ``load_best_model_at_end``
is refused there, since the best checkpoint's frozen layers may have trained since.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..core.adapters import is_peft_model
from ..core.fingerprint import Fingerprint
from ..core.partial_checkpoint import (
    MANIFEST_FILE,
    STATE_FILE,
    is_partial_checkpoint,
    load_trainable_state,
    save_trainable_state,
)
from ..core.plan import FreezePlan
from ..core.trainable_state import fingerprint_frozen
from ..errors import InvalidOptionError, PartialCheckpointError
from .resume import saved_plan
from .unfreezing import advance

logger = logging.getLogger("hf_freeze")

OVERRIDDEN_TRAINER_METHODS = ("_save_checkpoint", "_load_from_checkpoint", "_load_best_model")
TRAINING_ARGS_FILE = "training_args.bin"


class PartialCheckpointMixin:
    """The ``save_only_trainable`` hooks of ``FreezingTrainer`` (reads its ``freeze_plan``, its stage-0
    plan ``_plan`` and the gradual-unfreezing callback ``_unfreezing``)."""

    _in_checkpoint = False
    _frozen_print: Fingerprint | None = None
    _peft_noted = False

    @property
    def saves_only_trainable(self) -> bool:
        """The option is on and this trainer writes partial checkpoints (not PEFT, which saves its adapter)."""
        if not getattr(self.args, "save_only_trainable", False) or self.freeze_plan is None:
            return False
        if is_peft_model(self.model):
            if not self._peft_noted and self.args.should_save:
                logger.info("save_only_trainable: the PEFT adapter saving of Trainer already applies to checkpoints.")
            self._peft_noted = True
            return False
        return True

    def check_partial_checkpointing(self) -> None:
        """Refuse what partial checkpoints cannot do, before any step; take the fingerprint once per run."""
        self._frozen_print = None  # a new run may hold another model (model_init) or other weights
        if not self.saves_only_trainable:
            return
        option = "`save_only_trainable`=True"
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            name = "DeepSpeed" if self.is_deepspeed_enabled else "FSDP"
            raise InvalidOptionError(
                f"{option} is not supported under {name}: it shards or checkpoints the model state its own way "
                "(DeepSpeed writes and reloads its full module state in every checkpoint), so a partial "
                "checkpoint would not be what resume reads. Set save_only_trainable=False, or train with DDP."
            )
        if self.args.load_best_model_at_end and getattr(self.args, "unfreeze_strategy", "no") != "no":
            raise InvalidOptionError(
                f"{option} with load_best_model_at_end=True and gradual unfreezing cannot restore the best "
                "checkpoint: layers frozen at its stage may have trained since, and a partial checkpoint does not "
                "hold their base values. Set load_best_model_at_end=False (rebuild the best checkpoint afterwards "
                "with `hf-freeze rebuild`), or save_only_trainable=False."
            )
        if self._frozen_print is None and self.args.should_save:
            self._frozen_print = fingerprint_frozen(self.model, self.freeze_plan)

    # ------------------------------------------------------------------ save
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        self._in_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._in_checkpoint = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not (self._in_checkpoint and self.saves_only_trainable):
            return super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            self._save_partial(output_dir if output_dir is not None else self.args.output_dir)

    def _save_partial(self, directory: str) -> None:
        if self._frozen_print is None:
            self._frozen_print = fingerprint_frozen(self.model, self.freeze_plan)
        save_trainable_state(self.model, self.freeze_plan, directory, fingerprint=self._frozen_print)
        config = getattr(self.model, "config", None)
        if config is not None and hasattr(config, "save_pretrained"):
            config.save_pretrained(directory)  # rebuild and the transformers-version check read it
        if self.processing_class is not None:
            self.processing_class.save_pretrained(directory)
        torch.save(self.args, os.path.join(directory, TRAINING_ARGS_FILE))

    # ------------------------------------------------------------------ load
    def _checkpoint_plan(self, checkpoint: str) -> FreezePlan | None:
        """This run's plan at the checkpoint's unfreeze stage (what its tensors must be), or None."""
        if self._plan is None:
            return None
        saved = saved_plan(checkpoint)
        stage = saved.stage if saved is not None else 0
        events = self._unfreezing.events if self._unfreezing is not None else []
        return advance(self._plan, events, stage) if stage else self._plan

    def _load_partial(self, checkpoint: str, plan: FreezePlan | None) -> None:
        fingerprint = load_trainable_state(self.model, checkpoint, plan=plan)
        if self.args.should_save and self._frozen_print is None:
            self._frozen_print = fingerprint  # verified against these weights: no second hash
        if self.accelerator.is_main_process:
            logger.info(f"Loaded the trained tensors of the partial checkpoint {checkpoint} (fingerprint verified).")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if not is_partial_checkpoint(resume_from_checkpoint):
            if os.path.isfile(os.path.join(resume_from_checkpoint, STATE_FILE)):
                raise PartialCheckpointError(
                    f"{resume_from_checkpoint!r} holds {STATE_FILE} but not its manifest {MANIFEST_FILE}, which "
                    "save_only_trainable writes last: the checkpoint is incomplete or was copied in part. Resume "
                    "from a complete checkpoint (or copy the whole folder from one save)."
                )
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if model is not None and model is not self.model:
            raise PartialCheckpointError(
                f"{resume_from_checkpoint!r} is a partial checkpoint, which loads only onto an unsharded model "
                "(not under DeepSpeed, FSDP or SageMaker model parallelism). Resume without that backend."
            )
        self._load_partial(resume_from_checkpoint, self._checkpoint_plan(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best is None or not is_partial_checkpoint(best):
            return super()._load_best_model()
        self._load_partial(best, self.freeze_plan)
