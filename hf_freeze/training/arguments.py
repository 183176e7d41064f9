"""``FreezingTrainingArguments``: ``TrainingArguments`` plus the freezing options of the spec.

The freezing fields are ordinary dataclass fields, so they parse from command-line flags and YAML
files through ``HfArgumentParser`` and show up in ``to_dict()``/``--help`` like any other argument.
The validated :class:`~hf_freeze.FreezeSpec` is kept as a plain attribute (``freeze_spec``), not a
field, so ``TrainingArguments.to_dict()``/``to_json_string()`` keep working for logs and model cards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from ..core.spec import FreezeSpec
from ..errors import InvalidOptionError
from ..parsing import ExtendAction
from . import feature_caching

UNFREEZE_STRATEGIES = ("no", "steps", "epoch")
# Options outside FreezeSpec that change the optimizer groups or when the trainable set changes: recorded in
# freeze_plan.json (FreezePlan.trainer_options) and compared on resume, like the spec.
TRAINER_PLAN_OPTIONS = ("layer_lr_decay", "unfreeze_strategy", "unfreeze_steps", "unfreeze_layers_per_event")


@dataclass
class FreezingTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the options that decide which parameters train.

    Parameters:
        > What is frozen

        freeze (`list[str]`, defaults to `[]`):
            Regex patterns over `model.named_parameters()` names; a pattern matches whole dot-separated
            segments (`layer.1` matches `encoder.layer.1.output.dense.bias`, not `encoder.layer.10...`).
        unfreeze (`list[str]`, defaults to `[]`):
            Patterns of parameters that train whatever `freeze` and the shortcuts say.
        freeze_embeddings (`bool`, defaults to `False`):
            Freeze the input embedding block (token, position, token-type embeddings and their norm).
        freeze_layers (`str` or `int`, *optional*):
            Layers of the main stack to freeze: `8` (bottom 8), `":8"`, `"-2:"`, `"0,3:5"`, `"all"`.
        layer_stack (`str`, *optional*):
            Pattern naming the layer stack(s) `freeze_layers` addresses, e.g. `"encoder.layer"`.
        train_head (`bool`, defaults to `True`):
            The task head trains whatever the other rules say.
        freeze_norm_stats (`bool`, defaults to `True`):
            Frozen BatchNorm-style layers keep their running statistics fixed.
        freeze_strict (`bool`, defaults to `True`):
            A pattern that matches no parameter is an error (`False`: a warning).

        > How the trainable part trains

        layer_lr_decay (`float`, defaults to `1.0`):
            Layer `i` of `L` gets `lr * decay**(L - i)`, the embeddings `lr * decay**(L + 1)`, the head `lr`.
        unfreeze_strategy (`str`, defaults to `"no"`):
            Gradual unfreezing: `"no"`, `"steps"` or `"epoch"`.
        unfreeze_steps (`float`, defaults to `1`):
            Every this many steps (or epochs) the next frozen layers are unfrozen.
        unfreeze_layers_per_event (`int`, defaults to `1`):
            How many frozen layers each event unfreezes.

        > Frozen-prefix feature caching

        cache_frozen_features (`bool`, defaults to `False`):
            Run the frozen embeddings + bottom frozen layers once per distinct input (eval mode), train the rest.
        feature_cache_max_memory_mb (`float`, defaults to `2048`):
            Memory budget of the cache; past it, features go to a memory-mapped file in `feature_cache_dir`.
        feature_cache_dir (`str`, *optional*):
            Folder of that file (default: the system temporary folder).
    """

    freeze: list[str] = field(
        default_factory=list,
        metadata={"help": "Regex patterns of parameters to freeze, matched on whole name segments, e.g. "
                  "`--freeze embeddings 'encoder.layer.[0-3]'`; repeating the flag adds patterns.",
                  "action": ExtendAction},
    )
    unfreeze: list[str] = field(
        default_factory=list,
        metadata={"help": "Regex patterns of parameters that train whatever the other rules say, e.g. "
                  "`--unfreeze 'layer.3.output'`; repeating the flag adds patterns.",
                  "action": ExtendAction},
    )
    freeze_embeddings: bool = field(
        default=False,
        metadata={"help": "Freeze the input embedding block (token/position/type embeddings and their norm), "
                  "e.g. `--freeze_embeddings`."},
    )
    freeze_layers: str | None = field(
        default=None,
        metadata={"help": "Layers of the main layer stack to freeze: a count from the bottom, a Python-style "
                  "slice, a comma list or 'all', e.g. `--freeze_layers :8` (bounds outside the stack are errors). "
                  "A negative slice such as `--freeze_layers -2:` works in the recipes and `hf-freeze inspect`; "
                  "a plain HfArgumentParser needs `--freeze_layers=-2:` or "
                  "`hf_freeze.parsing.accept_negative_values(parser)`."},
    )
    layer_stack: str | None = field(
        default=None,
        metadata={"help": "Pattern naming the layer stack(s) that `freeze_layers` addresses, e.g. "
                  "`--layer_stack encoder.layer` (default: the main stack(s) found automatically)."},
    )
    train_head: bool = field(
        default=True,
        metadata={"help": "Keep the task head trainable whatever the other rules say, e.g. `--train_head false`."},
    )
    freeze_norm_stats: bool = field(
        default=True,
        metadata={"help": "Frozen normalization layers (BatchNorm etc.) keep their running statistics fixed, "
                  "e.g. `--freeze_norm_stats false` to let them update."},
    )
    freeze_strict: bool = field(
        default=True,
        metadata={"help": "A freeze/unfreeze pattern that matches no parameter is an error (false: a warning), "
                  "e.g. `--freeze_strict false`."},
    )
    layer_lr_decay: float = field(
        default=1.0,
        metadata={"help": "Layer-wise learning-rate decay in (0, 1]: layer i of L gets lr * decay**(L - i), the "
                  "embeddings lr * decay**(L + 1), the head lr, e.g. `--layer_lr_decay 0.9` (1.0 = off)."},
    )
    unfreeze_strategy: str = field(
        default="no",
        metadata={"help": "Gradual unfreezing schedule, as `save_strategy` works, e.g. `--unfreeze_strategy epoch`.",
                  "choices": list(UNFREEZE_STRATEGIES)},
    )
    unfreeze_steps: float = field(
        default=1,
        metadata={"help": "Every this many steps (or epochs) the next frozen layers are unfrozen; a float in (0, 1) "
                  "is a fraction of the total steps, e.g. `--unfreeze_steps 100`."},
    )
    unfreeze_layers_per_event: int = field(
        default=1,
        metadata={"help": "How many frozen layers each unfreezing event unfreezes, e.g. "
                  "`--unfreeze_layers_per_event 2`."},
    )

    cache_frozen_features: bool = field(
        default=False,
        metadata={"help": "Compute the frozen prefix (embeddings and the bottom frozen layers) once per distinct "
                  "input, in eval mode, and train only the layers above, e.g. `--cache_frozen_features`."},
    )
    feature_cache_max_memory_mb: float = field(
        default=2048,
        metadata={"help": "Memory budget of the frozen-feature cache in MiB; past it, features spill to a "
                  "memory-mapped file in `feature_cache_dir`, e.g. `--feature_cache_max_memory_mb 512`."},
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the frozen-feature spill file (default: the system temporary folder), e.g. "
                  "`--feature_cache_dir /scratch/cache`."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.freeze_spec = FreezeSpec(
            freeze=self.freeze,
            unfreeze=self.unfreeze,
            freeze_embeddings=self.freeze_embeddings,
            freeze_layers=self.freeze_layers,
            layer_stack=self.layer_stack,
            train_head=self.train_head,
            freeze_norm_stats=self.freeze_norm_stats,
            freeze_strict=self.freeze_strict,
        )
        # FreezeSpec normalises these ("none" -> None, one pattern -> a list); keep the fields in step.
        self.freeze, self.unfreeze = self.freeze_spec.freeze, self.freeze_spec.unfreeze
        self.freeze_layers = self.freeze_spec.freeze_layers
        self.layer_stack = self.freeze_spec.layer_stack
        self._validate_schedule_options()
        feature_caching.check_options(self)

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

    @property
    def trainer_plan_options(self) -> dict[str, Any]:
        """The values of :data:`TRAINER_PLAN_OPTIONS`, as saved with the plan."""
        return {name: getattr(self, name) for name in TRAINER_PLAN_OPTIONS}

    @property
    def freezing_enabled(self) -> bool:
        """True when any option changes what trains (the trainer is then more than plain ``Trainer``)."""
        return self.freeze_spec.freezes_anything or self.layer_lr_decay != 1.0 or self.unfreeze_strategy != "no"
