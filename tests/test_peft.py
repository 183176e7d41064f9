"""PEFT models: rules refine what PEFT made trainable, and nothing trains that the adapter does not save.

A matrix of tiny PEFT models (LoRA on a causal LM, LoRA with ``modules_to_save`` on a sequence
classifier, IA3 and LoHa on a causal LM) x freezing options (none, ``freeze_layers``, a ``freeze``
pattern, an ``unfreeze`` of a base weight). For each: the exact trainable set, a short ``train()``,
and a reload of the saved adapter onto a fresh base model that must reproduce every parameter and
the outputs of the trained model.
"""

from __future__ import annotations

import re

import pytest
import torch
from tiny_models import build

from hf_freeze import FreezeSpec, FreezingTrainer, FreezingTrainingArguments, UnsavedTrainableError, freeze_model
from hf_freeze.core.adapters import peft_saved_names, unsaved_trainable
from hf_freeze.training.unfreezing import unfreeze_events

peft = pytest.importorskip("peft")

ARGS = dict(
    per_device_train_batch_size=4,
    learning_rate=5e-2,
    report_to="none",
    use_cpu=True,
    logging_steps=1,
    disable_tqdm=True,
    save_strategy="no",
    dataloader_num_workers=0,
    max_steps=3,
)


class Tokens(torch.utils.data.Dataset):
    """Seeded token sequences; ``lm`` labels are the inputs (causal LM), else a binary class."""

    def __init__(self, lm: bool, n: int = 12, length: int = 8):
        g = torch.Generator().manual_seed(3)
        self.x = torch.randint(0, 99, (n, length), generator=g)
        self.y = self.x if lm else torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


# base model, PEFT config factory, causal LM?, the layer-0 segment, a base module no adapter saves
CASES = {
    "lora-causal-lm": (
        "llama",
        lambda: peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        True,
        "layers.0",
        r"layers\.3\.mlp\.down_proj",
    ),
    "lora-seq-cls-modules-to-save": (
        "bert",
        lambda: peft.LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"),
        False,
        "layer.0",
        "pooler.dense",
    ),
    "ia3-causal-lm": (
        "llama",
        lambda: peft.IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"], task_type="CAUSAL_LM"
        ),
        True,
        "layers.0",
        r"layers\.3\.self_attn\.o_proj",
    ),
    "loha-causal-lm": (
        "llama",
        lambda: peft.LoHaConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        True,
        "layers.0",
        "lm_head",
    ),
}


def peft_model(case: str):
    base, config, _, _, _ = CASES[case]
    return peft.get_peft_model(build(base), config())


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def in_layer0(case: str, name: str) -> bool:
    return f".{CASES[case][3]}." in name


def options_for(case: str, option: str) -> dict:
    layer0 = CASES[case][3]
    return {
        "none": {},
        "freeze_layers": {"freeze_layers": ":1"},
        "freeze": {"freeze": [re.escape(layer0)]},
    }[option]


def expected_trainable(case: str, option: str, arrived: set[str]) -> set[str]:
    if option == "none":
        return arrived
    return {n for n in arrived if not in_layer0(case, n)}  # both rules freeze exactly layer 0's adapter


def run(case: str, options: dict, tmp_path):
    _, _, lm, _, _ = CASES[case]
    model = peft_model(case)
    arrived = trainable(model)
    args = FreezingTrainingArguments(str(tmp_path / "out"), **ARGS, **options)
    trainer = FreezingTrainer(model=model, args=args, train_dataset=Tokens(lm))
    return model, arrived, trainer


def assert_reload_reproduces(case: str, model, out_dir) -> None:
    """A fresh base model plus the saved adapter equals the trained model, parameter by parameter and in outputs."""
    base, _, lm, _, _ = CASES[case]
    reloaded = peft.PeftModel.from_pretrained(build(base), out_dir)
    trained = dict(model.named_parameters())
    again = dict(reloaded.named_parameters())
    assert set(again) == set(trained)
    differ = sorted(n for n in trained if not torch.equal(trained[n].detach(), again[n].detach()))
    assert not differ, f"trained but not restored from the saved adapter: {differ[:5]}"
    inputs = Tokens(lm).x[:3]
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=inputs).logits, model(input_ids=inputs).logits)


@pytest.mark.slow
@pytest.mark.parametrize("option", ["none", "freeze_layers", "freeze"])
@pytest.mark.parametrize("case", list(CASES))
def test_peft_matrix_trains_exactly_the_expected_set_and_saves_it(case, option, tmp_path):
    model, arrived, trainer = run(case, options_for(case, option), tmp_path)
    expected = expected_trainable(case, option, arrived)
    assert expected and (option == "none" or expected < arrived)
    assert trainable(model) == expected
    assert set(trainer.freeze_plan.trainable_names) == expected  # also the report-only plan (no option)
    assert trainer.freeze_plan.trainable_numel == sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved and moved <= expected
    assert moved <= peft_saved_names(model)
    trainer.save_model(str(tmp_path / "saved"))
    assert_reload_reproduces(case, model, tmp_path / "saved")


@pytest.mark.parametrize("case", list(CASES))
def test_peft_unfreezing_a_base_weight_is_an_error_before_training(case, tmp_path):
    pattern = CASES[case][4]
    model = peft_model(case)
    args = FreezingTrainingArguments(str(tmp_path / "out"), **ARGS, unfreeze=[pattern])
    with pytest.raises(UnsavedTrainableError, match=r"PEFT does not save them.*modules_to_save=\[") as err:
        FreezingTrainer(model=model, args=args, train_dataset=Tokens(CASES[case][2]))
    lost = [n for n in dict(model.named_parameters()) if re.search(rf"(?:^|\.){pattern}(?:\.|$)", n)]
    assert lost and all(n in str(err.value) for n in lost[:5])
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in lost)  # nothing was applied


def test_peft_unfreeze_of_a_module_in_modules_to_save_trains_and_saves_it(tmp_path):
    # The same base module as above, now listed in modules_to_save: the unfreeze reaches its saved copy.
    config = peft.LoraConfig(
        r=2, target_modules=["query", "value"], task_type="SEQ_CLS", modules_to_save=["pooler.dense"]
    )
    model = peft.get_peft_model(build("bert"), config)
    copy = "base_model.model.bert.pooler.dense.modules_to_save.default.weight"
    options = {"freeze": ["pooler"], "unfreeze": [r"pooler\.dense\.modules_to_save"]}
    args = FreezingTrainingArguments(str(tmp_path / "out"), **ARGS, **options)
    trainer = FreezingTrainer(model=model, args=args, train_dataset=Tokens(lm=False))
    assert trainer.freeze_plan.decision(copy).rule == r"unfreeze:pooler\.dense\.modules_to_save"
    assert not model.get_parameter("base_model.model.bert.pooler.dense.original_module.weight").requires_grad
    before = model.get_parameter(copy).detach().clone()
    trainer.train()
    assert not torch.equal(before, model.get_parameter(copy))
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = peft.PeftModel.from_pretrained(build("bert"), tmp_path / "saved")
    assert torch.equal(reloaded.get_parameter(copy), model.get_parameter(copy))


def test_peft_train_head_never_trains_a_head_peft_froze():
    # The reported bug: any rule on a LoRA causal LM turned the frozen lm_head on (train_head=True).
    model = peft_model("lora-causal-lm")
    plan = FreezeSpec(freeze_layers=":1").resolve(model)
    head = plan.decision("base_model.model.lm_head.weight")
    assert (head.trainable, head.rule) == (False, "requires_grad")
    # An explicit unfreeze pattern is the only way to train it, and PEFT must then save it.
    lost = r"base_model\.model\.lm_head\.weight.*modules_to_save=\['lm_head'\]"
    with pytest.raises(UnsavedTrainableError, match=lost):
        freeze_model(model, unfreeze=["lm_head"])
    config = peft.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    saved_head = peft.get_peft_model(build("llama"), config)
    plan = freeze_model(saved_head, freeze=["lm_head"])  # train_head protects the saved copy from the rule
    assert plan.decision("base_model.model.lm_head.modules_to_save.default.weight").rule == "train_head"
    assert not unsaved_trainable(saved_head, plan.trainable_names)


def test_peft_unfreezing_the_original_copy_of_a_saved_module_names_the_narrower_pattern():
    model = peft_model("lora-seq-cls-modules-to-save")
    with pytest.raises(UnsavedTrainableError, match=r"original_module.*'classifier.modules_to_save'"):
        freeze_model(model, unfreeze=["classifier"])
    freeze_model(model, unfreeze=[r"classifier\.modules_to_save"])  # the narrower pattern is fine


def test_peft_report_only_plan_states_requires_grad(tmp_path):
    model = peft_model("lora-causal-lm")
    args = FreezingTrainingArguments(str(tmp_path / "out"), **ARGS)
    plan = FreezingTrainer(model=model, args=args, train_dataset=Tokens(lm=True)).freeze_plan
    assert {d.name: d.trainable for d in plan.params} == {n: p.requires_grad for n, p in model.named_parameters()}
    assert {d.rule for d in plan.params} == {"requires_grad"}


def test_peft_without_options_warns_about_a_trainable_weight_it_will_not_save(tmp_path, caplog):
    model = peft_model("lora-causal-lm")
    model.get_parameter("base_model.model.lm_head.weight").requires_grad_(True)  # the user's own doing
    args = FreezingTrainingArguments(str(tmp_path / "out"), **ARGS)
    with caplog.at_level("WARNING", logger="hf_freeze"):
        FreezingTrainer(model=model, args=args, train_dataset=Tokens(lm=True))  # drop-in: no error
    assert "base_model.model.lm_head.weight" in caplog.text and "modules_to_save" in caplog.text


def test_peft_gradual_unfreezing_brings_back_only_adapter_weights():
    model = peft_model("lora-causal-lm")
    plan = FreezeSpec(freeze_layers=":2").resolve(model)
    events = unfreeze_events(plan, 1)
    assert len(events) == 2
    assert all("lora_" in name for event in events for name in event)
    assert not unsaved_trainable(model, [n for event in events for n in event])
