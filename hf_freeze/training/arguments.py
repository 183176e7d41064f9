"""``FreezingTrainingArguments``: ``TrainingArguments`` plus the freezing options of the spec.

The freezing fields are ordinary dataclass fields, so they parse from command-line flags and YAML
files through ``HfArgumentParser`` and show up in ``to_dict()``/``--help`` like any other argument.
The validated :class:`~hf_freeze.FreezeSpec` is kept as a plain attribute (``freeze_spec``), not a
field, so ``TrainingArguments.to_dict()``/``to_json_string()`` keep working for logs and model cards.
:func:`resolve_and_apply` is what the arguments do to a model, as ``FreezingTrainer`` runs it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import TrainingArguments

from ..core.api import release_applied_plan
from ..core.plan import FreezePlan
from ..core.spec import FreezeSpec
from ..errors import InvalidOptionError
from ..options import (
    OPTIONS,
    PLAN_TRAINING_OPTIONS,
    SPEC_OPTIONS,
    TRAINING_OPTIONS,
    UNFREEZE_STRATEGIES,
    options_dataclass,
    options_docstring,
)
from . import feature_caching

logger = logging.getLogger("hf_freeze")

# Options outside FreezeSpec that change the optimizer groups or when the trainable set changes: recorded in
# freeze_plan.json (FreezePlan.trainer_options) and compared on resume, like the spec.
TRAINER_PLAN_OPTIONS = PLAN_TRAINING_OPTIONS

# One field per option of hf_freeze.options (help, ExtendAction, choices in the metadata). It comes first
# among the bases so that dataclass puts these fields after TrainingArguments' (output_dir stays first).
_OptionFields = options_dataclass("_OptionFields", OPTIONS, module=__name__)


@dataclass
class FreezingTrainingArguments(_OptionFields, TrainingArguments):
    """``TrainingArguments`` with the options that decide which parameters train."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.freeze_spec = FreezeSpec(**{o.name: getattr(self, o.name) for o in SPEC_OPTIONS})
        # FreezeSpec normalises values ("none" -> None, one pattern -> a list); keep the fields in step.
        for option in SPEC_OPTIONS:
            setattr(self, option.name, getattr(self.freeze_spec, option.name))
        self._validate_option_types()
        self._validate_schedule_options()
        feature_caching.check_options(self)

    def _validate_option_types(self) -> None:
        """The on/off and folder options outside the spec (FreezeSpec checks its own): a string such as
        "false" from a hand-built config would otherwise switch an option on, and a number as a folder
        would fail only when the folder is first used."""
        for option in TRAINING_OPTIONS:
            value = getattr(self, option.name)
            if option.type is bool and not isinstance(value, bool):
                raise InvalidOptionError(
                    f"`{option.name}`={value!r} is not valid: use True or False, e.g. `{option.example}`."
                )
            if option.type == (str | None) and not (value is None or isinstance(value, (str, os.PathLike))):
                raise InvalidOptionError(
                    f"`{option.name}`={value!r} is not valid: use a folder path (a string) or None, e.g. "
                    f"`{option.example}`."
                )

    def _validate_schedule_options(self) -> None:
        decay = self.layer_lr_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise InvalidOptionError(
                f"`layer_lr_decay`={decay!r} is not valid: use a number in (0, 1], e.g. 0.9 (1.0 turns it off)."
            )
        if self.unfreeze_strategy not in UNFREEZE_STRATEGIES:
            raise InvalidOptionError(
                f"`unfreeze_strategy`={self.unfreeze_strategy!r} is not valid: use one of {list(UNFREEZE_STRATEGIES)}."
            )
        steps = self.unfreeze_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, float)) or steps <= 0 or (1 < steps != int(steps)):
            raise InvalidOptionError(
                f"`unfreeze_steps`={steps!r} is not valid: use a whole number of steps/epochs >= 1, or a fraction "
                "of the total steps in (0, 1), e.g. 100 or 0.25."
            )
        if self.unfreeze_strategy == "epoch" and steps != int(steps):
            raise InvalidOptionError(
                f"`unfreeze_steps`={steps!r} is not valid with unfreeze_strategy='epoch': use a whole number of "
                "epochs >= 1, e.g. 1."
            )
        layers = self.unfreeze_layers_per_event
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise InvalidOptionError(
                f"`unfreeze_layers_per_event`={layers!r} is not valid: use a whole number >= 1, e.g. 2."
            )
        if self.unfreeze_strategy != "no" and not self.freeze_spec.freezes_anything:
            raise InvalidOptionError(
                f"`unfreeze_strategy`={self.unfreeze_strategy!r} has nothing to unfreeze: set `freeze_layers` "
                "(and/or `freeze_embeddings`) to say what starts frozen, or set unfreeze_strategy='no'."
            )
        if self.save_only_trainable and not self.freezing_enabled:
            raise InvalidOptionError(
                "`save_only_trainable`=True needs a freezing option (e.g. `freeze_layers`, `freeze_embeddings`, "
                "`freeze`) that says what is frozen; without one everything trains and a checkpoint is the whole "
                "model. Set a freezing option, or save_only_trainable=False (a PEFT model's checkpoints already "
                "hold only its adapter)."
            )

    @property
    def trainer_plan_options(self) -> dict[str, Any]:
        """The values of :data:`TRAINER_PLAN_OPTIONS`, as saved with the plan."""
        return {name: getattr(self, name) for name in TRAINER_PLAN_OPTIONS}

    @property
    def freezing_enabled(self) -> bool:
        """True when any option changes what trains (the trainer is then more than plain ``Trainer``)."""
        return self.freeze_spec.freezes_anything or self.layer_lr_decay != 1.0 or self.unfreeze_strategy != "no"


# The Parameters section, TRL style, generated from the declarations.
FreezingTrainingArguments.__doc__ = f"{FreezingTrainingArguments.__doc__}\n\n{options_docstring(OPTIONS)}"


def resolve_and_apply(model: nn.Module, args: Any) -> FreezePlan | None:
    """Resolve the freezing options of ``args`` against ``model`` and apply them; return the plan.

    Without a freezing option (or with plain ``TrainingArguments``) the model is not touched: the plan
    is report-only, stating what ``requires_grad`` already says (a PEFT model arrives partly frozen), or
    None when everything trains. With options, what an earlier hf-freeze plan froze on this same model
    object is released first, so the new plan starts from what the model had before hf-freeze touched it.
    """
    spec: FreezeSpec | None = getattr(args, "freeze_spec", None)
    if spec is not None and getattr(args, "freezing_enabled", False):
        release_applied_plan(model)
        plan = spec.resolve(model)
        plan.trainer_options = args.trainer_plan_options  # saved with the plan, compared on resume
        plan.apply(model)
        return plan
    if all(p.requires_grad for p in model.parameters()):
        return None
    try:  # report-only: never applied
        return FreezeSpec(train_head=False, freeze_norm_stats=False).resolve(model)
    except Exception as err:  # noqa: BLE001 - reporting must never break a plain Trainer run
        logger.debug(f"No freeze plan recorded for {type(model).__name__}: {err}")
        return None
