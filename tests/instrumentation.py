"""Test instrumentation for recipe runs: per-rank parameter checksums before and after training.

The multi-process tests compare these records across ranks (replicas bitwise identical, frozen
parameters unchanged) and check from them that the run really was distributed. A test hands the
recorder to a recipe as a callback (``main(args, callbacks=[ChecksumRecorder(directory)])``, or
through ``tests/distributed_scripts/run_recipe.py`` under ``accelerate launch``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils import extract_model_from_parallel
from transformers import TrainerCallback


def tensor_checksum(tensor: torch.Tensor) -> str:
    """A short hash of the tensor's bytes: equal only if the values are bitwise equal."""
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def parameter_checksums(model: torch.nn.Module) -> dict[str, str]:
    return {name: tensor_checksum(param) for name, param in model.named_parameters()}


class ChecksumRecorder(TrainerCallback):
    """Writes ``<directory>/rank-<r>.json``: checksums before and after training, world size, log history.

    The initial checksums are taken when the trainer is built, before Accelerate wraps the model: DDP
    broadcasts rank 0's weights at wrap time, so only a snapshot taken earlier shows whether every
    rank was seeded alike.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.initial: dict[str, str] = {}

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self.initial = parameter_checksums(extract_model_from_parallel(model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        distributed = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        launched = PartialState()
        record = {
            "rank": rank,
            "world_size": dist.get_world_size() if distributed else 1,
            "num_processes": launched.num_processes,
            "parallel_mode": str(args.parallel_mode),
            "distributed_type": str(launched.distributed_type),
            # What Trainer decides from to scale the loss by the process count: the model's attribute when
            # set (the recipes set False), else whether its forward takes **kwargs (4.57's BERT does not).
            "accepts_loss_kwargs": accepts_loss_kwargs(extract_model_from_parallel(model)),
            "initial": self.initial,
            "final": parameter_checksums(extract_model_from_parallel(model)),
            "log_history": state.log_history,
        }
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, f"rank-{rank}.json"), "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1)


def accepts_loss_kwargs(model) -> bool:
    """Trainer's rule: ``model.accepts_loss_kwargs`` when set, else whether ``forward`` takes ``**kwargs``."""
    if "accepts_loss_kwargs" in vars(model) or hasattr(type(model), "accepts_loss_kwargs"):
        return bool(model.accepts_loss_kwargs)
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(model.forward).parameters.values())
