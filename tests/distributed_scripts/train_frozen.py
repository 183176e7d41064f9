"""Worker for tests/test_trainer_distributed.py: train a tiny BERT with frozen layers on 2 CPU processes.

Launched by the test through ``accelerate launch --multi_gpu --num_processes 2``; writes what the test
asserts (world size, checksums from every rank, frozen/trained parameters) to the JSON file it is given.

    accelerate launch --multi_gpu --num_processes 2 tests/distributed_scripts/train_frozen.py \
        --backend ddp --result /tmp/result.json
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tiny_models import TokenData, build  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402
from worker_end import gather_and_end  # noqa: E402

from hf_freeze import FreezingTrainer, FreezingTrainingArguments  # noqa: E402
from hf_freeze.training.unfreezing import GradualUnfreezing  # noqa: E402

FROZEN, TRAINED = "bert.encoder.layer.1.output.dense.weight", "bert.encoder.layer.3.output.dense.weight"


def deepspeed_config(stage: int) -> dict:
    return {
        "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True},
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }


def full_values(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's full value on this rank (gathered first under ZeRO-3)."""
    params = dict(model.named_parameters())
    if any(hasattr(p, "ds_id") for p in params.values()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {n: p.detach().clone() for n, p in params.items()}
    return {n: p.detach().clone() for n, p in params.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["ddp", "zero2", "zero3"], required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--output_dir", default=None)
    options = parser.parse_args()

    extra = {} if options.backend == "ddp" else {"deepspeed": deepspeed_config(int(options.backend[-1]))}
    args = FreezingTrainingArguments(
        options.output_dir or os.path.dirname(options.result),
        use_cpu=True,  # without it each process trains alone (see notes/distributed-cpu.md)
        freeze_embeddings=True,
        freeze_layers=":2",
        freeze=["pooler"],  # every trainable parameter gets a gradient: the plan turns find_unused_parameters off
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        **extra,
    )
    args.device  # noqa: B018 - joins the process group now, so zero.Init below sees both ranks
    if options.backend == "zero3":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    reference = build("bert")  # seeded: identical on every rank
    expected_total = sum(p.numel() for p in reference.parameters())
    # from_config builds under deepspeed.zero.Init when ZeRO-3 is on, so parameters arrive partitioned
    config = copy.deepcopy(reference.config)
    if options.backend == "zero3":  # transformers 4.57's BERT init zeroes the padding row of the (empty) partition
        config.pad_token_id = None
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.load_state_dict(reference.state_dict()) if options.backend != "zero3" else None
    partitioned = any(hasattr(p, "ds_id") for p in model.parameters())
    before = full_values(model)

    trainer = FreezingTrainer(model=model, args=args, train_dataset=TokenData(32))
    trainer.train()

    after = full_values(trainer.model)
    plan = trainer.freeze_plan
    frozen_unchanged = all(torch.equal(before[n], after[n]) for n in plan.frozen_names)
    trained_changed = sorted(n for n in plan.trainable_names if not torch.equal(before[n], after[n]))
    checksums = {n: float(v.double().sum()) + float(v.double().abs().sum()) for n, v in after.items()}
    # gradual unfreezing's check with this run's backend: accepted under DDP, refused under DeepSpeed
    probe = GradualUnfreezing("steps", 1, 1)
    probe.start(trainer.freeze_plan)
    refused = ""
    try:
        probe.check("DeepSpeed" if trainer.is_deepspeed_enabled else None, trainer.args.world_size, False, "linear")
    except ValueError as err:
        refused = str(err)
    mine = {
        "rank": dist.get_rank(),
        "world_size": trainer.args.world_size,
        "parallel_mode": str(trainer.args.parallel_mode),
        "deepspeed": trainer.is_deepspeed_enabled,
        "partitioned": partitioned,
        "plan_total": plan.total_numel,
        "expected_total": expected_total,
        "frozen_count": len(plan.frozen_names),
        "frozen_unchanged": frozen_unchanged,
        "trained_changed": trained_changed,
        "checksums": checksums,
        "unfreeze_refused": refused,
        "find_unused_parameters": getattr(trainer.model_wrapped, "find_unused_parameters", None),
    }
    gather_and_end(options.result, mine)


if __name__ == "__main__":
    main()
