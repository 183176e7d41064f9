"""Every difference between the supported transformers versions (4.57 and 5.x), in one place.

Nothing else in ``hf_freeze`` compares transformers versions or probes ``Trainer`` for a method: it
asks this module. Each entry says which versions need it, so an entry can go once the oldest
supported version no longer does. ``tests/test_compat.py`` fails loudly when a private ``Trainer``
method used here disappears or changes its parameters.

Differences that need no code here, because the library already decides from the model itself:

- module paths (ViT's ``vit.encoder.layer`` in 4.57 vs ``vit.layers`` in 5.x, LLaVA's vision tower):
  layer stacks, the embedding block and the head are discovered from the module tree;
- ``forward(**kwargs)`` (5.x BERT has it, 4.57 BERT does not): ``recipes/recipe_models.disable_unused_loss_kwargs``
  reads the signature, as ``Trainer`` does, and leaves a model without ``**kwargs`` alone.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from collections.abc import Callable
from typing import Any

import transformers
from torch import nn
from transformers import PreTrainedModel, Trainer, TrainingArguments
from transformers.modeling_layers import GradientCheckpointingLayer

_TRAINING_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainingArguments))

# 5.x: `activation_checkpointing(_kwargs)` (the `gradient_checkpointing*` names are deprecated aliases);
# 4.57: only `gradient_checkpointing(_kwargs)`.
_NEW_CHECKPOINTING = "activation_checkpointing"
CHECKPOINTING_ARG = _NEW_CHECKPOINTING if _NEW_CHECKPOINTING in _TRAINING_FIELDS else "gradient_checkpointing"
CHECKPOINTING_KWARGS_ARG = f"{CHECKPOINTING_ARG}_kwargs"

# 5.x: `PreTrainedModel.is_activation_checkpointing`; 4.57: only `is_gradient_checkpointing`.
_MODEL_CHECKPOINTING_FLAG = next(
    flag for flag in ("is_activation_checkpointing", "is_gradient_checkpointing") if hasattr(PreTrainedModel, flag)
)

# 5.x: `Trainer.create_optimizer(model=None)`; 4.57: `create_optimizer()`, always for `self.model`.
CREATE_OPTIMIZER_TAKES_MODEL = "model" in inspect.signature(Trainer.create_optimizer).parameters

# 5.x only: `optimizer_cls_and_kwargs` may hold an optimizer factory called with the model (Muon/Dion-style);
# 4.57 calls every optimizer class with the parameter groups. Nothing in hf_freeze depends on it; tests read it.
OPTIMIZER_FACTORIES = importlib.util.find_spec("transformers.trainer_optimizer") is not None

# 4.57: `GradientCheckpointingLayer` checkpoints in `__call__`, around the layer's forward pre-hooks, so a pre-hook
# cannot make the checkpoint's inputs require grad; 5.x checkpoints inside `forward`, after the pre-hooks.
CHECKPOINT_WRAPS_PRE_HOOKS = GradientCheckpointingLayer.__call__ is not nn.Module.__call__

# Private `Trainer` methods that `CompatTrainer` overrides (same parameters in 4.57 and 5.x). No public hook
# runs between the model reaching its final trainable set and Accelerate wrapping it.
PRIVATE_TRAINER_METHODS: dict[str, tuple[str, ...]] = {
    "_wrap_model": ("model", "training", "dataloader"),
    # save_only_trainable (training/checkpointing.py): how a checkpoint folder is written and read back.
    "_save_checkpoint": ("model", "trial"),
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
    "_load_best_model": (),
}


def missing_training_fields(*classes: type) -> tuple[type, ...]:
    """The dataclasses among ``classes`` whose fields ``TrainingArguments`` does not declare.

    4.57's ``TrainingArguments`` still has ``overwrite_output_dir``; 5.x dropped it. A recipe that
    declares such a field itself uses this to pick its bases, so the flag is parsed once on every
    version (argparse refuses a flag declared twice).
    """
    return tuple(cls for cls in classes if not {f.name for f in dataclasses.fields(cls)} & _TRAINING_FIELDS)


def checkpointing_requested(args: Any) -> bool:
    """Whether the arguments ask ``Trainer`` for activation (gradient) checkpointing."""
    return bool(getattr(args, CHECKPOINTING_ARG, False))


def checkpointing_kwargs(args: Any) -> dict[str, Any]:
    """The checkpointing keyword arguments (``use_reentrant``, ...) the arguments give, or ``{}``."""
    return dict(getattr(args, CHECKPOINTING_KWARGS_ARG, None) or {})


def model_checkpointing(model: nn.Module) -> bool:
    """Whether checkpointing is switched on in ``model``: the model's own flag, or any submodule's."""
    if getattr(model, _MODEL_CHECKPOINTING_FLAG, False) is True:
        return True
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def checkpoint_inputs_hook(block: nn.Module, prepare: Callable[[tuple], tuple]) -> Callable[..., None] | None:
    """A forward pre-hook, for a module that runs ``block``, that applies ``prepare`` to the positional inputs
    of ``block``'s checkpoint before it starts (4.57); None where ``block``'s own pre-hooks already run first (5.x).

    4.57 keeps the checkpoint function in the private ``_gradient_checkpointing_func`` attribute, replaced each
    time checkpointing is switched on, so the hook wraps it again whenever it finds it unwrapped.
    """
    if not (CHECKPOINT_WRAPS_PRE_HOOKS and isinstance(block, GradientCheckpointingLayer)):
        return None

    def hook(module: nn.Module, args: tuple) -> None:
        checkpoint = block.__dict__.get("_gradient_checkpointing_func")
        if checkpoint is None or getattr(checkpoint, "hf_freeze_prepare", None) is prepare:
            return

        def prepared(function: Callable, *inputs: Any, **kwargs: Any) -> Any:
            return checkpoint(function, *prepare(inputs), **kwargs)

        prepared.hf_freeze_prepare = prepare
        block._gradient_checkpointing_func = prepared

    return hook


def private_trainer_method_problems(trainer_cls: type = Trainer) -> list[str]:
    """What no longer matches :data:`PRIVATE_TRAINER_METHODS` in ``trainer_cls`` (empty when all is well)."""
    problems = []
    for name, expected in PRIVATE_TRAINER_METHODS.items():
        method = getattr(trainer_cls, name, None)
        if method is None:
            problems.append(f"transformers.Trainer.{name} no longer exists")
            continue
        params = tuple(p for p in inspect.signature(method).parameters if p != "self")
        if params[: len(expected)] != expected:
            problems.append(f"transformers.Trainer.{name}{params} no longer takes {expected}")
    return problems


class CompatTrainer(Trainer):
    """``Trainer`` with one calling convention for the hooks ``FreezingTrainer`` needs, on every supported version.

    Subclasses override :meth:`_plan_find_unused_parameters`; the private ``Trainer`` method it runs
    from stays in this class.
    """

    def create_optimizer(self, model: nn.Module | None = None):
        if model is None or (model is self.model and not CREATE_OPTIMIZER_TAKES_MODEL):
            return super().create_optimizer()
        if not CREATE_OPTIMIZER_TAKES_MODEL:
            raise TypeError(
                f"create_optimizer(model={type(model).__name__}): transformers {transformers.__version__} builds the "
                "optimizer for `trainer.model` only. Call create_optimizer() (or pass trainer.model), or use "
                "transformers 5, whose Trainer accepts another model here."
            )
        return super().create_optimizer(model)

    # Private in 4.57 and 5.x, called right before Accelerate wraps the model. DDP's `find_unused_parameters`
    # is chosen in `_wrap_model` in 4.57 and in `_build_accelerator_args` (at `__init__`) in 5.x; both end up in
    # `accelerator.ddp_handler`, which Accelerate reads when it wraps, so setting it here works on both.
    def _wrap_model(self, model: nn.Module, training: bool = True, dataloader: Any = None) -> nn.Module:
        wrapped = super()._wrap_model(model, training, dataloader)
        find_unused = self._plan_find_unused_parameters() if training else None
        if find_unused is not None:
            from accelerate.utils import DistributedDataParallelKwargs

            if self.accelerator.ddp_handler is None:
                self.accelerator.ddp_handler = DistributedDataParallelKwargs()
            self.accelerator.ddp_handler.find_unused_parameters = find_unused
        return wrapped

    def _plan_find_unused_parameters(self) -> bool | None:
        """DDP's ``find_unused_parameters`` for this run, or None to keep ``Trainer``'s choice."""
        return None
