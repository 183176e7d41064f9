"""Checks of the distributed backend against a freeze plan, run before training starts.

Each check turns a late, cryptic failure (or a silent one) into an early error or warning that
names the option to change. They take plain values (a model, a plan, a plugin) so they are tested
without launching a backend.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..core.param_decision import GROUP_OTHER
from ..core.plan import FreezePlan
from ..errors import InvalidOptionError
from . import compat

logger = logging.getLogger("hf_freeze")

_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _wrap_classes(plugin: Any, model: nn.Module) -> set[str]:
    names = getattr(plugin, "transformer_cls_names_to_wrap", None) or getattr(model, "_no_split_modules", None)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    return set(names or [])


def mixed_fsdp_units(model: nn.Module, wrap_classes: set[str]) -> list[str]:
    """FSDP units (instances of ``wrap_classes``, plus the root) whose own parameters mix frozen and trainable.

    FSDP1 without ``use_orig_params`` flattens each unit into one tensor, which must be all frozen or all
    trainable.
    """
    units = [""] + [name for name, m in model.named_modules() if name and type(m).__name__ in wrap_classes]
    units.sort(key=len, reverse=True)  # innermost first: a parameter belongs to its deepest unit
    flags: dict[str, set[bool]] = {}
    for name, param in model.named_parameters():
        owner = next(u for u in units if u == "" or name.startswith(u + "."))
        flags.setdefault(owner, set()).add(param.requires_grad)
    return sorted((u or "<root>") for u, seen in flags.items() if len(seen) > 1)


def check_fsdp(model: nn.Module, plugin: Any) -> None:
    """FSDP1 without ``use_orig_params`` cannot hold a unit that mixes frozen and trainable parameters."""
    if plugin is None or getattr(plugin, "fsdp_version", 1) != 1 or getattr(plugin, "use_orig_params", False):
        return
    mixed = mixed_fsdp_units(model, _wrap_classes(plugin, model))
    if mixed:
        raise InvalidOptionError(
            f"FSDP1 with `use_orig_params`=False flattens each wrapped unit into one tensor, but {len(mixed)} "
            f"unit(s) mix frozen and trainable parameters (e.g. {mixed[:3]}). Set `use_orig_params: true` "
            "(`fsdp_config={'use_orig_params': True}`, or `fsdp_use_orig_params: true` in the accelerate "
            "config), or use FSDP2 (`fsdp_version: 2`)."
        )


def find_unused_from_plan(model: nn.Module, plan: FreezePlan, checkpointing: bool) -> bool:
    """``find_unused_parameters`` for DDP, decided from the plan.

    DDP registers only parameters that require grad, so frozen ones never need the unused-parameter
    search. It is needed only when a *trainable* parameter may get no gradient: one outside the embedding
    block, the layer stacks and the head (a pooler, a projector), or an expert of a mixture-of-experts model.
    With activation checkpointing it stays off, as in ``Trainer`` (reentrant checkpointing breaks it).
    """
    if checkpointing:
        return False
    config = getattr(model, "config", None)
    if config is not None and any(getattr(config, key, 0) for key in _MOE_KEYS):
        return True
    return any(p.trainable and p.group == GROUP_OTHER for p in plan.params)


def ddp_find_unused(model: nn.Module, plan: FreezePlan, args: Any, log: bool = True) -> bool | None:
    """:func:`find_unused_from_plan` for a run with freezing options; None when the user set
    ``ddp_find_unused_parameters`` (theirs wins). ``log``: say what was chosen (under DDP only)."""
    if args.ddp_find_unused_parameters is not None:
        return None
    find_unused = find_unused_from_plan(model, plan, checkpointing_on(args, model))
    if log and args.world_size > 1:  # one process has no DDP wrap
        logger.info(f"ddp_find_unused_parameters={find_unused} (chosen from the freeze plan)")
    return find_unused


def checkpointing_on(args: Any, model: nn.Module) -> bool:
    """Activation checkpointing requested by the arguments or already on in the model (names: :mod:`.compat`)."""
    return compat.checkpointing_requested(args) or compat.model_checkpointing(model)


def prepare_checkpointing(model: nn.Module, plan: FreezePlan, args: Any) -> None:
    """Under activation checkpointing above frozen layers: warn about a failing DDP setting and hook the
    lowest trainable blocks (:func:`make_checkpointed_layers_trainable`)."""
    if not plan.frozen_names or not checkpointing_on(args, model):
        return
    reentrant = bool(compat.checkpointing_kwargs(args).get("use_reentrant", True))
    check_checkpointing(plan, args.ddp_find_unused_parameters, True, reentrant)
    hooked = make_checkpointed_layers_trainable(model, plan)
    logger.debug(f"Inputs of {hooked} require grad under activation checkpointing.")


def check_checkpointing(plan: FreezePlan, find_unused: bool | None, checkpointing: bool, reentrant: bool) -> None:
    """Warn about DDP's unused-parameter search combined with reentrant checkpointing above frozen layers."""
    if checkpointing and reentrant and find_unused and plan.frozen_names:
        logger.warning(
            "`ddp_find_unused_parameters`=True with reentrant activation checkpointing can fail under DDP "
            "('Expected to mark a variable ready only once'). Set `ddp_find_unused_parameters`=False or use "
            "`activation_checkpointing_kwargs={'use_reentrant': False}`."
        )


def _needs_grad(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad


def _inputs_require_grad(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook: the block's hidden-state input gets ``requires_grad`` so a checkpointed block above
    frozen layers still produces gradients for its own parameters."""
    if not (module.training and torch.is_grad_enabled()):
        return None
    for i, value in enumerate(args):
        if _needs_grad(value):
            return args[:i] + (value.detach().requires_grad_(),) + args[i + 1 :], kwargs
    for key in ("hidden_states", "inputs_embeds", "x"):
        if _needs_grad(kwargs.get(key)):
            return args, {**kwargs, key: kwargs[key].detach().requires_grad_()}
    return None


def _positional_inputs_require_grad(args: tuple) -> tuple:
    """The first floating-point positional input that does not require grad, made to (the hidden states)."""
    if not torch.is_grad_enabled():
        return args
    for i, value in enumerate(args):
        if _needs_grad(value):
            return args[:i] + (value.detach().requires_grad_(),) + args[i + 1 :]
    return args


_HOOK = "_hf_freeze_inputs_require_grad"


def make_checkpointed_layers_trainable(model: nn.Module, plan: FreezePlan) -> list[str]:
    """Hook the lowest block with trainable parameters of every layer stack (see :func:`_inputs_require_grad`).

    ``transformers`` does this for models fed ``input_ids`` (``enable_input_require_grads``), not for models
    fed ``inputs_embeds`` nor for other modules; a reentrant checkpoint whose inputs and outputs do not
    require grad silently skips the backward of the block. Returns the hooked module names.
    """
    hooked = []
    for stack in plan.stacks:
        layers = sorted(
            {p.layer for p in plan.params if p.stack == stack["path"] and p.trainable and p.layer is not None}
        )
        if not layers:
            continue
        name = f"{stack['path']}.{layers[0]}"
        block = model.get_submodule(name)
        if block.__dict__.get(_HOOK) is None:
            block.__dict__[_HOOK] = block.register_forward_pre_hook(_inputs_require_grad, with_kwargs=True)
            outer = compat.checkpoint_inputs_hook(block, _positional_inputs_require_grad)
            if outer is not None:  # transformers 4.57: the checkpoint runs around the block's own pre-hook
                model.get_submodule(stack["path"].rpartition(".")[0]).register_forward_pre_hook(outer)
        hooked.append(name)
    return hooked
