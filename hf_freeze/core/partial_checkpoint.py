"""Checkpoints that hold only what trained, tied to their base weights by a fingerprint.

A partial fine-tune changes a small part of the model; writing the whole model at every checkpoint
stores gigabytes that did not change. :func:`save_trainable_state` writes only the trainable
parameters (a tied tensor once, under its canonical name) and the buffers that change in training
(the running statistics of norm layers the plan does not freeze). The rest of the model must then
come from the same base weights when the checkpoint is read, so the folder also holds a fingerprint
of every tensor it does not store, and :func:`load_trainable_state` checks the model against it
before anything is copied. The pieces, one job each: the fingerprint is :mod:`.fingerprint`; which
tensors are stored and which fingerprinted is :mod:`.trainable_state`; the files on disk (names,
manifest, atomic writes, integrity checks) are :mod:`.checkpoint_files`. This module ties them to a
model and re-exports their public names, so ``from hf_freeze.core.partial_checkpoint import ...``
is the one import a user needs.

Example (a plain PyTorch loop)::

    plan = freeze_model(model, freeze_layers=":10")
    frozen_print = fingerprint_frozen(model, plan)             # once per run
    save_trainable_state(model, plan, "ckpt/step-100", fingerprint=frozen_print)
    ...
    model = AutoModelForCausalLM.from_pretrained(base)         # the same base weights
    plan.apply(model)
    load_trainable_state(model, "ckpt/step-100", plan=plan)    # PlanMismatchError on another base
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..errors import PartialCheckpointError, PlanMismatchError  # noqa: F401 - PartialCheckpointError re-exported
from .checkpoint_files import (  # noqa: F401 - re-exported
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    SAFETENSORS_DTYPES,
    STATE_FILE,
    PartialCheckpointFiles,
    is_partial_checkpoint,
    open_state,
    read_fingerprint,
    read_manifest,
    write_files,
)
from .fingerprint import (  # noqa: F401 - re-exported: the public names of partial checkpoints live here
    EDGE_BYTES,
    SAMPLED_ELEMENTS,
    Fingerprint,
    TensorPrint,
    fingerprint_tensors,
    local_tensor,
)
from .plan import PLAN_FILE, FreezePlan
from .trainable_state import (  # noqa: F401 - re-exported
    fingerprint_frozen,
    frozen_names,
    frozen_tensor_names,
    model_state,
    unwrap,
)


# ---------------------------------------------------------------------------------- save
def save_trainable_state(
    model: nn.Module, plan: FreezePlan, directory: str | os.PathLike, fingerprint: Fingerprint | None = None
) -> PartialCheckpointFiles:
    """Write what trains under ``plan`` (and the norm statistics it lets change) into ``directory``.

    ``model`` is the model the plan was resolved for (a DDP/DataParallel wrapper is looked through;
    unwrap other wrappers first). ``fingerprint`` is the one :func:`fingerprint_frozen` computed at the
    start of the run (restricted here to what is frozen now, so it stays valid under gradual
    unfreezing); without it, it is computed. Files are written under a temporary name and renamed, the
    manifest last, so a crash never leaves a truncated file under the final name. Call it on one
    process only (rank 0). Returns the paths written.
    """
    model = unwrap(model)
    state = model_state(model, plan.frozen_norms)
    plan.check_fits(model, state.params)
    frozen = frozen_names(state, plan)
    if fingerprint is None:
        fingerprint = fingerprint_tensors((name, state.tensor(name)) for name in frozen)
    else:
        try:
            fingerprint = fingerprint.restrict(frozen)
        except KeyError as error:
            raise PlanMismatchError(
                f"The fingerprint passed to save_trainable_state was made for another model or plan: {error.args[0]}. "
                "Compute it with fingerprint_frozen(model, plan) on this model."
            ) from None

    names = plan.trainable_names + state.trained_buffers
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name in names:
        tensor = local_tensor(state.tensor(name), name).to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        tensors[name] = tensor.clone() if pointer in storages else tensor  # safetensors refuses shared storage
        storages.add(pointer)

    return write_files(directory, tensors, state.trained_buffers, fingerprint, plan, type(model).__name__)


# ---------------------------------------------------------------------------------- load
def load_trainable_state(model: nn.Module, directory: str | os.PathLike, plan: FreezePlan | None = None) -> Fingerprint:
    """Copy a partial checkpoint's tensors into ``model`` in place (bitwise), after checking that the
    weights it does not store are the ones it was saved against.

    Everything is checked before the first tensor is copied, so a refused load leaves ``model``
    untouched: the files (missing, truncated, corrupt: :class:`PartialCheckpointError`); that every
    stored and fingerprinted name exists with the same shape and dtype and that the model holds no
    tensor the checkpoint knows nothing of; with ``plan``, that it trains exactly the stored
    parameters; then the fingerprint (another base model or one changed frozen tensor:
    :class:`PlanMismatchError` naming the first differing tensor). Returns the verified fingerprint,
    which later :func:`save_trainable_state` calls can reuse.
    """
    manifest = read_manifest(directory)
    saved = read_fingerprint(directory, manifest)
    with open_state(directory, manifest, saved) as handle:
        return _check_and_copy(unwrap(model), handle, manifest, saved, plan, os.fspath(directory))


def _check_and_copy(  # the checks against the model; checkpoint_files checked the files themselves
    model: nn.Module, handle, manifest: dict[str, Any], saved: Fingerprint, plan: FreezePlan | None, directory: str
) -> Fingerprint:
    where = f"the partial checkpoint {directory!r} (saved from {manifest['model_class']})"
    state = model_state(model)

    stored = manifest["parameters"] + manifest["buffers"]
    unknown = [name for name in stored + saved.names if name not in state.lookup]
    if unknown:
        raise PlanMismatchError(
            f"{where} holds {len(unknown)} tensor(s) {type(model).__name__} does not have (e.g. {unknown[:3]}): it "
            "was saved from another architecture or configuration. Load it onto the base model it was trained from."
        )
    covered = {state.lookup[name] for name in stored + saved.names}
    uncovered = [name for name in list(state.params) + list(state.buffers) if name not in covered]
    if uncovered:
        raise PlanMismatchError(
            f"{type(model).__name__} has {len(uncovered)} tensor(s) that {where} neither stores nor fingerprints "
            f"(e.g. {uncovered[:3]}): it is another architecture or configuration. Load it onto the base model it "
            "was trained from."
        )
    for name in stored:
        header = handle.get_slice(name)
        target = state.tensor(name)
        shape, dtype = header.get_shape(), SAFETENSORS_DTYPES.get(header.get_dtype())
        if list(target.shape) != list(shape) or target.dtype != dtype:
            raise PlanMismatchError(
                f"{name!r} is {list(target.shape)} {target.dtype} in the model but {shape} {dtype} in {where}. "
                "Load the base model with the configuration and dtype (torch_dtype=...) the run was trained with."
            )
    if plan is not None:
        plan.check_fits(model, state.params)
        planned = {state.lookup[name] for name in plan.trainable_names}
        held = {state.lookup[name] for name in manifest["parameters"]}
        if planned != held:
            only_plan, only_saved = sorted(planned - held), sorted(held - planned)
            raise PlanMismatchError(
                f"The plan trains another set of parameters than {where} holds (plan stage {plan.stage}, checkpoint "
                f"stage {manifest['stage']}): trained by the plan only: {only_plan[:3]} ({len(only_plan)}); held by "
                f"the checkpoint only: {only_saved[:3]} ({len(only_saved)}). Resume with the checkpoint's "
                f"{PLAN_FILE}."
            )

    current = fingerprint_tensors(((name, state.tensor(name)) for name in saved.names), saved.samples, saved.edge_bytes)
    if current.digest != saved.digest:
        differences = saved.differences(current)
        raise PlanMismatchError(
            f"The frozen weights of this {type(model).__name__} are not the ones {where} was trained on: "
            f"{differences[0]} ({len(differences)} of {len(saved.tensors)} frozen tensors differ"
            + ("; another base model or seed" if len(differences) > 1 else "")
            + "). Load the base model the run started from; a checkpoint holds only what trained."
        )

    with torch.no_grad():
        for name in stored:
            state.tensor(name).copy_(handle.get_tensor(name))
    return current


def rebuild_trained_model(base_model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """``base_model`` with a partial checkpoint's trained tensors loaded (same checks as
    :func:`load_trainable_state`), for evaluation or export.

    >>> model = rebuild_trained_model(AutoModel.from_pretrained(base), "out/checkpoint-500")  # doctest: +SKIP
    >>> model.save_pretrained("out/full-model")                                                # doctest: +SKIP
    """
    load_trainable_state(base_model, directory)
    return base_model
