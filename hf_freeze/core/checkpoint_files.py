"""The files of a partial checkpoint: their names, writing them whole, reading them back intact.

This module is the on-disk format and knows nothing of models: :mod:`.partial_checkpoint` decides
which tensors to store and whether a model fits them, and hands the files' side to this one. So every
check that the files themselves are sound (missing, truncated, corrupt, mixed from two saves:
:class:`PartialCheckpointError`) lives here, apart from the checks against a model.

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
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import PartialCheckpointError
from .fingerprint import Fingerprint
from .plan import FreezePlan

STATE_FILE = "trainable_state.safetensors"
MANIFEST_FILE = "trainable_state.json"
FORMAT = "hf-freeze-trainable-state"
FORMAT_VERSION = 1

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

# safetensors' dtype names, to compare a stored tensor with the model's before anything is read.
SAFETENSORS_DTYPES = {
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


class PartialCheckpointFiles(NamedTuple):
    """The files :func:`~hf_freeze.core.partial_checkpoint.save_trainable_state` wrote."""

    state: str
    manifest: str
    plan: str


# ---------------------------------------------------------------------------------- write
def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    # a write killed before its rename leaves "<file>.tmp-<pid>" behind; a later save into the same folder
    # (a resumed run rewriting that checkpoint) removes it instead of keeping a dead half-written copy
    for stale in glob.glob(f"{glob.escape(path)}.tmp-*"):
        os.remove(stale)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_files(
    directory: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    buffers: list[str],
    fingerprint: Fingerprint,
    plan: FreezePlan,
    model_class: str,
) -> PartialCheckpointFiles:
    """Write the tensors, the plan and the manifest into ``directory``.

    Each file is written under a temporary name and renamed, the manifest last, so a crash never
    leaves a truncated file under its final name and a folder with a manifest is complete.
    """
    os.makedirs(directory, exist_ok=True)
    state_path = os.path.join(directory, STATE_FILE)
    metadata = {"format": FORMAT, "fingerprint": fingerprint.digest}
    _atomic_write(state_path, lambda path: save_file(tensors, path, metadata=metadata))
    plan_path = plan.save(directory)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_class": model_class,
        "plan_hash": plan.plan_hash,
        "stage": plan.stage,
        "state_file": STATE_FILE,
        "state_bytes": os.path.getsize(state_path),
        "parameters": plan.trainable_names,
        "buffers": buffers,
        "fingerprint": fingerprint.to_dict(),
    }
    manifest_path = os.path.join(directory, MANIFEST_FILE)

    def write_manifest(path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1)

    _atomic_write(manifest_path, write_manifest)
    return PartialCheckpointFiles(state_path, manifest_path, plan_path)


# ---------------------------------------------------------------------------------- read
def is_partial_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a partial checkpoint (its manifest), for a resume path to branch on."""
    return os.path.isfile(os.path.join(directory, MANIFEST_FILE))


# key -> (type, what it must be), so a hand-edited manifest is an error naming the key, not a TypeError
_MANIFEST_TYPES = {
    "version": (int, "an int"),
    "model_class": (str, "a string"),
    "state_file": (str, "a string"),
    "state_bytes": (int, "an int"),
    "parameters": (list, "a list of names"),
    "buffers": (list, "a list of names"),
}


def _has_type(value: Any, kinds: tuple[type, str]) -> bool:
    kind = kinds[0]
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    return kind is not list or all(isinstance(item, str) for item in value)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the partial checkpoint in ``directory``, checked to be whole and of a known version."""
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
    wrong = [key for key, kinds in _MANIFEST_TYPES.items() if not _has_type(manifest[key], kinds)]
    if wrong:
        raise PartialCheckpointError(
            f"{path} has a value of the wrong type for {wrong} (expected: "
            + ", ".join(f"{key} {_MANIFEST_TYPES[key][1]}" for key in wrong)
            + "): it was edited or corrupted. Use an intact copy."
        )
    if manifest["version"] > FORMAT_VERSION:
        raise PartialCheckpointError(
            f"{path} has format version {manifest['version']}; this hf-freeze reads up to {FORMAT_VERSION}. "
            "Upgrade hf-freeze."
        )
    return manifest


def read_fingerprint(directory: str | os.PathLike, manifest: dict[str, Any]) -> Fingerprint:
    """The fingerprint the manifest records (of the weights the checkpoint does not store)."""
    try:
        return Fingerprint.from_dict(manifest["fingerprint"])
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, PartialCheckpointError):
            raise
        raise PartialCheckpointError(
            f"The fingerprint in {os.path.join(directory, MANIFEST_FILE)} is malformed ({error!r}): the file was "
            "edited or corrupted. Use an intact copy of the checkpoint."
        ) from None


def open_state(directory: str | os.PathLike, manifest: dict[str, Any], fingerprint: Fingerprint):
    """The tensor file, opened lazily (``safe_open``), after checking it is whole and from the manifest's save."""
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
