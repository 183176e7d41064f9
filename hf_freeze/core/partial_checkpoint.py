"""Checkpoint files that hold only what trained, tied to their base weights by a fingerprint.

A partial fine-tune changes a small part of the model; writing the whole model at every checkpoint
stores gigabytes that did not change. This module writes only the trainable parameters (a tied
tensor once, under its canonical name) and the buffers that change in training (the running
statistics of norm layers the plan does not freeze) to ``trainable_state.safetensors``. The rest of
the model must then come from the same base weights when the checkpoint is read, so the folder also
holds a fingerprint of every tensor it does not store, checked before anything is copied. The
fingerprint itself is :mod:`.fingerprint`; which tensors are stored and which fingerprinted is
:mod:`.trainable_state`; this module reads and writes the files (and re-exports the public names).

Files written into the checkpoint folder:

- ``trainable_state.safetensors``: the tensors. The name is deliberately none that
  ``from_pretrained`` looks for (``model.safetensors``, ``model.safetensors.index.json``,
  ``pytorch_model.bin`` and their ``model.<variant>.*`` forms), so ``from_pretrained(folder)`` raises
  "no file named model.safetensors" instead of building a model whose frozen weights are random.
  Do not rename it.
- ``trainable_state.json``: the manifest (tensor names, the file size, the fingerprint). It is a file
  of its own rather than a field of ``freeze_plan.json`` because ``FreezePlan.from_dict`` rejects
  unknown keys (an older reader would break on a new field) and because the fingerprint describes the
  base weights, not the plan: one plan resolved against two seeds of a model is one plan.
- ``freeze_plan.json``: the plan, as every checkpoint already carries.

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

import json
import os
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import PartialCheckpointError, PlanMismatchError
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

STATE_FILE = "trainable_state.safetensors"
MANIFEST_FILE = "trainable_state.json"
FORMAT = "hf-freeze-trainable-state"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------- save
class PartialCheckpointFiles(NamedTuple):
    """The files :func:`save_trainable_state` wrote."""

    state: str
    manifest: str
    plan: str


def _atomic_write(path: str, write) -> None:
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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

    os.makedirs(directory, exist_ok=True)
    state_path = os.path.join(directory, STATE_FILE)
    metadata = {"format": FORMAT, "fingerprint": fingerprint.digest}
    _atomic_write(state_path, lambda path: save_file(tensors, path, metadata=metadata))
    plan_path = plan.save(directory)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_class": type(model).__name__,
        "plan_hash": plan.plan_hash,
        "stage": plan.stage,
        "state_file": STATE_FILE,
        "state_bytes": os.path.getsize(state_path),
        "parameters": plan.trainable_names,
        "buffers": state.trained_buffers,
        "fingerprint": fingerprint.to_dict(),
    }
    manifest_path = os.path.join(directory, MANIFEST_FILE)

    def write_manifest(path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1)

    _atomic_write(manifest_path, write_manifest)
    return PartialCheckpointFiles(state_path, manifest_path, plan_path)


# ---------------------------------------------------------------------------------- load
def is_partial_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a partial checkpoint (its manifest), for a resume path to branch on."""
    return os.path.isfile(os.path.join(directory, MANIFEST_FILE))


_MANIFEST_KEYS = (
    "version",
    "model_class",
    "stage",
    "state_file",
    "state_bytes",
    "parameters",
    "buffers",
    "fingerprint",
)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(path):
        present = sorted(os.listdir(directory)) if os.path.isdir(directory) else "the folder does not exist"
        raise PartialCheckpointError(
            f"{path} is missing, so {os.fspath(directory)!r} is not a partial checkpoint written by "
            f"save_trainable_state (it holds: {present}). A full model folder loads with from_pretrained."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PartialCheckpointError(f"{path} cannot be read ({error}); use an intact copy of the checkpoint") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PartialCheckpointError(f"{path} is not an hf-freeze partial-checkpoint manifest (format {FORMAT!r})")
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing or os.path.basename(str(manifest.get("state_file"))) != manifest.get("state_file"):
        raise PartialCheckpointError(
            f"{path} lacks {missing or ['a plain state_file name']}: it was edited or corrupted. Use an intact copy."
        )
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise PartialCheckpointError(
            f"{path} has format version {manifest['version']}; this hf-freeze reads up to {FORMAT_VERSION}. "
            "Upgrade hf-freeze."
        )
    return manifest


def _open_state(directory: str | os.PathLike, manifest: dict[str, Any], fingerprint: Fingerprint):
    path = os.path.join(directory, manifest["state_file"])
    if not os.path.isfile(path):
        raise PartialCheckpointError(
            f"{path} is missing: the checkpoint's trained tensors are gone (an interrupted copy?). Use a complete "
            "copy of the checkpoint, or resume from an earlier one."
        )
    size, written = os.path.getsize(path), manifest["state_bytes"]
    try:
        handle = safe_open(path, framework="pt", device="cpu")
    except (SafetensorError, OSError) as error:
        if size < written:
            raise PartialCheckpointError(
                f"{path} is {size:,} bytes but was written as {written:,}: the file is truncated (an interrupted "
                "copy, a full disk?). Use an intact copy, or resume from an earlier checkpoint."
            ) from None
        raise PartialCheckpointError(
            f"{path} is not a readable safetensors file ({error}): it is corrupt. Use an intact copy, or resume "
            "from an earlier checkpoint."
        ) from None
    metadata = handle.metadata() or {}
    expected = manifest["parameters"] + manifest["buffers"]
    if metadata.get("fingerprint") != fingerprint.digest or set(handle.keys()) != set(expected) or size != written:
        raise PartialCheckpointError(
            f"{path} and {MANIFEST_FILE} come from different saves (their fingerprints or tensor names differ). "
            "Copy the whole checkpoint folder from one save."
        )
    return handle


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
    try:
        saved = Fingerprint.from_dict(manifest["fingerprint"])
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, PartialCheckpointError):
            raise
        raise PartialCheckpointError(
            f"The fingerprint in {os.path.join(directory, MANIFEST_FILE)} is malformed ({error!r}): the file was "
            "edited or corrupted. Use an intact copy of the checkpoint."
        ) from None
    with _open_state(directory, manifest, saved) as handle:
        return _check_and_copy(unwrap(model), handle, manifest, saved, plan, os.fspath(directory))


def _check_and_copy(
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
        shape, dtype = header.get_shape(), _SAFETENSORS_DTYPES.get(header.get_dtype())
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


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def rebuild_trained_model(base_model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """``base_model`` with a partial checkpoint's trained tensors loaded (same checks as
    :func:`load_trainable_state`), for evaluation or export.

    >>> model = rebuild_trained_model(AutoModel.from_pretrained(base), "out/checkpoint-500")  # doctest: +SKIP
    >>> model.save_pretrained("out/full-model")                                                # doctest: +SKIP
    """
    load_trainable_state(base_model, directory)
    return base_model
