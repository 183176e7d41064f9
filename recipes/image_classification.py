"""Train the head of an image classifier over a frozen BatchNorm backbone (ResNet, ConvNeXt, ViT...).

With no arguments it runs offline: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes,
upscaled to 32x32) and a small 3-stage ResNet built from a config, with the stem and the bottom two
stages frozen; the top stage and the classifier head train. The frozen BatchNorm layers keep their
running statistics (``freeze_norm_stats``). Offline there are no pretrained weights, so the frozen
backbone is random: head-only training (``--freeze_layers all``) reaches only about 55% here, the
default about 98%. With a pretrained backbone, ``--freeze_layers all`` is the usual linear probe.
It reports accuracy and saves the model, ``freeze_plan.json`` and the metrics.

Usage (copy-paste):

    python recipes/image_classification.py                              # the offline default
    python recipes/image_classification.py --config recipes/configs/image_classification.yaml
    python recipes/image_classification.py --freeze_layers all --output_dir outputs/digits_head_only
    # online: a pretrained backbone (frozen whole: a linear probe) and a Hub dataset
    python recipes/image_classification.py --model_name_or_path microsoft/resnet-18 --freeze_layers all \\
        --dataset_name uoft-cs/cifar10 --image_column img --output_dir outputs/cifar10
    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/image_classification.py --bf16
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from recipe_args import parse_recipe_args
from recipe_data import label_names, label_to_id_fn, load_raw_datasets, require_columns
from recipe_metrics import accuracy_from_logits
from recipe_models import apply_config_overrides, disable_unused_loss_kwargs, resolve_model_path
from recipe_run import check_output_dir, run, setup_logging, train_evaluate_report
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    TrainerCallback,
    default_data_collator,
    set_seed,
)

from hf_freeze import FreezingTrainer

DEFAULTS = {
    "output_dir": "outputs/image_classification",
    "freeze_embeddings": True,
    "freeze_layers": ":2",
    "learning_rate": 5e-3,
    "num_train_epochs": 4,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 10,
    "report_to": "none",
    "remove_unused_columns": False,
}
DIGITS_SIZE = 32


def digits_dataset():
    """scikit-learn's digits as ``pixel_values`` (1x32x32, normalised) and a ``label`` ClassLabel."""
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = torch.nn.functional.interpolate(images, size=DIGITS_SIZE, mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    features = datasets.Features(
        {
            "pixel_values": datasets.Array3D((1, DIGITS_SIZE, DIGITS_SIZE), "float32"),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    data = datasets.Dataset.from_dict({"pixel_values": images.numpy(), "label": digits.target}, features=features)
    return datasets.DatasetDict({"train": data})


def small_resnet(names: list[str]) -> ResNetConfig:
    """A 3-stage ResNet for 1-channel 32x32 images; ``--config_overrides`` changes any field."""
    return ResNetConfig(
        num_channels=1,
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[1, 1, 1],
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )


def main(args: list[str] | None = None, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, float]:
    """Run the recipe on ``args`` (default: the command line); ``callbacks`` join the trainer's."""
    started = time.time()
    model_args, data_args, training_args = parse_recipe_args(DEFAULTS, args)
    setup_logging(training_args)
    check_output_dir(training_args, data_args)
    model_path = resolve_model_path(model_args.model_name_or_path, None)

    raw = load_raw_datasets(data_args, default=digits_dataset, seed=training_args.seed)
    image, label = data_args.image_column, data_args.label_column
    generated = "pixel_values" in raw["train"].column_names
    for split in raw.values():
        require_columns(split, label_column=label, image_column=None if generated else image)
    names = label_names(raw, label)
    to_id = label_to_id_fn(raw, label, names)

    if model_path is None:
        config = small_resnet(names)
    else:
        config = AutoConfig.from_pretrained(
            model_path,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )
    apply_config_overrides(config, model_args.config_overrides)
    set_seed(training_args.seed)
    if model_path is None:
        model, processor = ResNetForImageClassification(config), None
    else:
        model = AutoModelForImageClassification.from_pretrained(model_path, config=config, ignore_mismatched_sizes=True)
        processor = AutoImageProcessor.from_pretrained(model_path)
    disable_unused_loss_kwargs(model)

    if generated:
        data = raw.map(lambda b: {"labels": [to_id(v) for v in b[label]]}, batched=True, remove_columns=[label])
        data.set_format("torch")
    else:

        def transform(batch):
            pixels = processor([img.convert("RGB") for img in batch[image]], return_tensors="pt")["pixel_values"]
            return {"pixel_values": pixels, "labels": torch.tensor([to_id(v) for v in batch[label]])}

        data = raw
        for split in data.values():
            split.set_transform(transform)

    trainer = FreezingTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=processor,
        data_collator=default_data_collator,
        compute_metrics=accuracy_from_logits(),
        callbacks=list(callbacks),
    )
    headline = ["eval_accuracy", "eval_loss", "train_loss"]
    return train_evaluate_report(trainer, processor, "image_classification", started, headline)


if __name__ == "__main__":
    run(main)
