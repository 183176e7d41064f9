"""``hf-freeze rebuild BASE CHECKPOINT --output DIR``: a full model folder from a partial checkpoint.

A ``save_only_trainable`` checkpoint holds only what trained; evaluation and export need the whole
model. This loads BASE (the model folder or Hub id the run started from) with the class the checkpoint
was saved from, copies the checkpoint's tensors onto it after the fingerprint check
(:func:`hf_freeze.core.partial_checkpoint.rebuild_trained_model`) and writes a ``from_pretrained``
folder. Nothing is written when a check fails.

    hf-freeze rebuild path/to/base out/checkpoint-500 --output out/full-500

Exit codes as ``inspect``: 0 success; 2 the input is wrong (not a partial checkpoint, a damaged one,
another base model); 1 the environment failed (BASE cannot be read, DIR cannot be written).
"""

from __future__ import annotations

import argparse
import os


def make_rebuild_parser() -> argparse.ArgumentParser:
    """``hf-freeze rebuild``'s own parser (built when the command runs)."""
    parser = argparse.ArgumentParser(
        prog="hf-freeze rebuild",
        description="Load BASE, check the checkpoint's fingerprint of the frozen weights against it, copy the "
        "trained tensors onto it and save the full model to --output. Exit code 2 when the checkpoint is "
        "damaged or was trained from another base model.",
    )
    parser.add_argument("base", metavar="BASE", help="the model folder (or Hub id) the run started from")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint-N folder saved with save_only_trainable")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="where to write the full model")
    parser.add_argument(
        "--dtype",
        default="float32",
        metavar="DTYPE",
        help="the dtype the run trained in, e.g. bfloat16 (default float32, as Trainer loads without one)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run ``hf-freeze rebuild`` with the arguments after the command name."""
    return run_rebuild(make_rebuild_parser().parse_args(argv))


def run_rebuild(args: argparse.Namespace) -> int:
    import torch
    import transformers

    from ..core.partial_checkpoint import read_manifest, rebuild_trained_model
    from ..errors import FreezeError, InvalidOptionError

    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise InvalidOptionError(f"--output {args.output!r} is a file: give a folder (new or existing) to write into.")
    manifest = read_manifest(args.checkpoint)
    model_cls = getattr(transformers, manifest["model_class"], None)
    if model_cls is None or not hasattr(model_cls, "from_pretrained"):
        raise InvalidOptionError(
            f"CHECKPOINT {args.checkpoint!r} was saved from {manifest['model_class']!r}, which is not a transformers "
            "class: rebuild it in Python with hf_freeze.core.partial_checkpoint.rebuild_trained_model(model, folder)."
        )
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidOptionError(
            f"--dtype {args.dtype!r} is not a floating-point torch dtype: use e.g. float32 or bfloat16."
        )
    try:
        model = model_cls.from_pretrained(args.base, dtype=dtype)
    except (OSError, ValueError) as error:  # a missing folder is a Hub id to transformers: say which argument
        if isinstance(error, FreezeError):
            raise
        raise OSError(
            f"BASE {args.base!r} cannot be loaded as {manifest['model_class']} ({' '.join(str(error).split())}). "
            "Give the model folder or Hub id the run started from (not the checkpoint)."
        ) from None
    rebuild_trained_model(model, args.checkpoint)
    os.makedirs(args.output, exist_ok=True)
    model.save_pretrained(args.output)
    print(f"rebuilt {manifest['model_class']} from {args.base} and {args.checkpoint} into {args.output}")
    return 0
