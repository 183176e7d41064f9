"""Train the top layers of a causal language model (optionally its embeddings and head too).

With no arguments it runs offline: a tiny Llama-style model built from a config (4 layers; the
tokenizer of the bundled MiniLM) trained on generated review paragraphs (recipes/demo_data.py), with the embeddings
and the bottom 2 layers frozen (the top 2 layers, the final norm and the LM head train). Texts are
concatenated and cut into blocks of ``--max_length`` tokens. It reports the evaluation loss and
perplexity and saves the model, the tokenizer and ``freeze_plan.json``.

Usage (copy-paste):

    python recipes/causal_lm.py                                         # the offline default
    python recipes/causal_lm.py --config recipes/configs/causal_lm.yaml
    python recipes/causal_lm.py --freeze_layers :-4 --freeze_embeddings false --train_head false \\
        --model_name_or_path path/to/llama --train_file corpus.txt --output_dir outputs/clm
    # online: a Hub model and dataset, the top 4 of 24 layers and the head train
    python recipes/causal_lm.py --model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name Salesforce/wikitext \\
        --dataset_config_name wikitext-2-raw-v1 --freeze_layers :-4 --bf16 --output_dir outputs/qwen
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/causal_lm.py --bf16
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from itertools import chain

from demo_data import review_corpus
from recipe_args import parse_recipe_args
from recipe_data import load_raw_datasets, require_columns
from recipe_models import apply_config_overrides, default_minilm_path, disable_unused_loss_kwargs, resolve_model_path
from recipe_run import check_output_dir, run, setup_logging, train_evaluate_report
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    TrainerCallback,
    default_data_collator,
    set_seed,
)

from hf_freeze import FreezingTrainer
from hf_freeze.errors import InvalidOptionError

DEFAULTS = {
    "output_dir": "outputs/causal_lm",
    "text_column": "text",
    "max_length": 64,
    "freeze_embeddings": True,
    "freeze_layers": ":-2",
    "learning_rate": 2e-3,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 10,
    "report_to": "none",
}


def default_corpus():
    import datasets

    return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": review_corpus()})})


def tiny_llama(tokenizer, max_length: int) -> LlamaConfig:
    """A 4-layer Llama sized for a CPU demo; ``--config_overrides`` changes any field."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max(max_length, 128),
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id or tokenizer.bos_token_id,
        eos_token_id=tokenizer.sep_token_id or tokenizer.eos_token_id,
    )


def main(args: list[str] | None = None, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, float]:
    """Run the recipe on ``args`` (default: the command line); ``callbacks`` join the trainer's."""
    started = time.time()
    model_args, data_args, training_args = parse_recipe_args(DEFAULTS, args)
    setup_logging(training_args)
    check_output_dir(training_args, data_args)
    model_path = resolve_model_path(model_args.model_name_or_path, None)
    tokenizer_path = resolve_model_path(model_args.tokenizer_name, None, "tokenizer_name") or model_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or default_minilm_path())

    raw = load_raw_datasets(
        data_args, default=default_corpus, seed=training_args.seed, file_types=(".txt", ".csv", ".json", ".jsonl")
    )
    for split in raw.values():
        require_columns(split, text_column=data_args.text_column)

    if model_path is None:
        config = tiny_llama(tokenizer, data_args.max_length)
    else:
        config = AutoConfig.from_pretrained(model_path)
    apply_config_overrides(config, model_args.config_overrides)
    set_seed(training_args.seed)
    if model_path is None:
        model = LlamaForCausalLM(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, config=config)
    disable_unused_loss_kwargs(model)

    block = data_args.max_length

    def tokenize_and_group(batch):
        ids = tokenizer(batch[data_args.text_column])["input_ids"]
        stream = list(chain.from_iterable(ids))
        usable = (len(stream) // block) * block
        blocks = [stream[i : i + block] for i in range(0, usable, block)]
        return {"input_ids": blocks, "attention_mask": [[1] * block for _ in blocks], "labels": [b[:] for b in blocks]}

    with training_args.main_process_first(desc="tokenize"):
        data = raw.map(tokenize_and_group, batched=True, batch_size=1000, remove_columns=raw["train"].column_names)
    for name in ("train", "validation"):
        if len(data[name]) == 0:
            raise InvalidOptionError(
                f"`max_length`={block}: the {name} split has fewer tokens than one block; "
                "lower --max_length or give more text."
            )

    trainer = FreezingTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=list(callbacks),
    )
    return train_evaluate_report(
        trainer,
        tokenizer,
        "causal_lm",
        started,
        ["eval_loss", "perplexity", "train_loss"],
        extra_eval=lambda m: {"perplexity": math.exp(min(m["eval_loss"], 50.0))},
    )


if __name__ == "__main__":
    run(main)
