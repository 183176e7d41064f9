"""Partial checkpoints: only what trained is written, and it only loads onto its own base weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import transformers as tf

from hf_freeze import PLAN_FILE, PlanMismatchError, freeze_model
from hf_freeze.core.partial_checkpoint import (
    EDGE_BYTES,
    MANIFEST_FILE,
    SAMPLED_ELEMENTS,
    STATE_FILE,
    PartialCheckpointError,
    fingerprint_frozen,
    fingerprint_tensors,
    frozen_tensor_names,
    is_partial_checkpoint,
    load_trainable_state,
    rebuild_trained_model,
    save_trainable_state,
)

# Big enough that tensor bytes dominate the safetensors header (the size target is +1%), small
# enough to train in well under a second.
_TEXT = dict(vocab_size=1000, hidden_size=128, num_attention_heads=2, intermediate_size=512, num_hidden_layers=4)
MODELS = {
    "bert": (
        lambda: tf.BertForSequenceClassification(tf.BertConfig(num_labels=3, **_TEXT)),
        dict(freeze_embeddings=True, freeze_layers=":2"),
    ),
    # Tied lm_head: the head rule trains the shared embedding matrix, which must be stored once.
    "llama": (
        lambda: tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=1, tie_word_embeddings=True, **_TEXT)),
        dict(freeze_layers=":2"),
    ),
    # BatchNorm: the trainable top stage's running statistics change and must be stored; the frozen
    # stages' statistics stay fixed and are fingerprinted.
    "resnet": (
        lambda: tf.ResNetForImageClassification(
            tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1], num_labels=3)
        ),
        dict(freeze_embeddings=True, freeze_layers=":2"),
    ),
}


def make(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODELS[name][0]()


def inputs(name: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    if name == "resnet":
        return {
            "pixel_values": torch.randn(4, 3, 16, 16, generator=generator),
            "labels": torch.randint(0, 3, (4,), generator=generator),
        }
    ids = torch.randint(0, 1000, (4, 12), generator=generator)
    labels = torch.randint(0, 3, (4,), generator=generator) if name == "bert" else ids
    return {"input_ids": ids, "labels": labels}


def logits(model: torch.nn.Module, name: str) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        batch = {k: v for k, v in inputs(name).items() if k != "labels"}
        return model(**batch).logits


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request, tmp_path_factory):
    """(name, trained model, plan, checkpoint folder): a few plain-torch steps on the trainable part."""
    name = request.param
    model = make(name)
    plan = freeze_model(model, **MODELS[name][1])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(**inputs(name)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    directory = tmp_path_factory.mktemp(f"partial-{name}")
    save_trainable_state(model, plan, directory)
    return name, model, plan, directory


def fresh_base(name: str, plan=None, seed: int = 0) -> torch.nn.Module:
    model = make(name, seed)
    if plan is not None:
        plan.apply(model)
    return model


def test_round_trip_is_bitwise(trained):
    name, model, plan, directory = trained
    assert sorted(os.listdir(directory)) == sorted([STATE_FILE, MANIFEST_FILE, PLAN_FILE])  # no temporary left
    assert is_partial_checkpoint(directory)
    restored = fresh_base(name, plan)
    before = {k: v.clone() for k, v in restored.state_dict().items()}
    load_trainable_state(restored, directory, plan=plan)
    after, expected = restored.state_dict(), model.state_dict()
    assert after.keys() == expected.keys()
    for key in expected:
        assert torch.equal(after[key], expected[key]), key
    changed = [key for key in expected if not torch.equal(before[key], expected[key])]
    assert changed, "training changed nothing, so the round trip proves nothing"


def test_file_holds_the_trainable_set_once(trained):
    from safetensors import safe_open

    name, model, plan, directory = trained
    with safe_open(os.path.join(directory, STATE_FILE), "pt") as handle:
        keys = set(handle.keys())
    params = {k for k in keys if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert params == set(plan.trainable_names)
    if name == "llama":
        assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # the tie, once
    if name == "resnet":
        norms = {k.rpartition(".")[0] for k in keys - params}
        assert norms and not norms & set(plan.frozen_norms)
        base = fresh_base(name)
        for norm in norms:  # the stored statistics are ones that training moved
            assert not torch.equal(model.get_submodule(norm).running_mean, base.get_submodule(norm).running_mean)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_model_part_is_at_most_trainable_bytes_plus_one_percent(name, tmp_path):
    model = make(name)
    plan = freeze_model(model, **MODELS[name][1])
    params = dict(model.named_parameters())  # ties once, like the plan
    trainable_bytes = sum(params[n].numel() * params[n].element_size() for n in plan.trainable_names)
    size = os.path.getsize(save_trainable_state(model, plan, tmp_path).state)
    assert trainable_bytes <= size <= 1.01 * trainable_bytes
    full = sum(p.numel() * p.element_size() for p in params.values())
    assert size < 0.75 * full


def test_rebuild_reproduces_the_trained_outputs(trained):
    name, model, _, directory = trained
    expected = logits(model, name)
    rebuilt = rebuild_trained_model(fresh_base(name), directory)
    assert torch.equal(logits(rebuilt, name), expected)
    assert not torch.equal(logits(fresh_base(name), name), expected)


def test_another_seed_is_refused_and_left_untouched(trained):
    name, _, plan, directory = trained
    other = fresh_base(name, plan, seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    first_frozen = frozen_tensor_names(other, plan)[0]
    with pytest.raises(PlanMismatchError, match="another base model") as error:
        load_trainable_state(other, directory, plan=plan)
    assert repr(first_frozen) in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


@pytest.mark.parametrize("where", ["first", "middle"])
def test_one_changed_frozen_tensor_is_named(trained, where):
    name, _, plan, directory = trained
    base = fresh_base(name, plan)
    frozen = dict(base.named_parameters())
    target = max(plan.frozen_names, key=lambda n: frozen[n].numel())  # the largest: sampled if big enough
    flat = frozen[target].data.view(-1)
    step = max(1, flat.numel() // SAMPLED_ELEMENTS)
    index = 0 if where == "first" else step * (min(flat.numel(), SAMPLED_ELEMENTS) // 2)
    flat[index] += 1.0
    total = len(frozen_tensor_names(base, plan))
    with pytest.raises(PlanMismatchError, match=rf"'{target}' has other values \(1 of {total} frozen"):
        load_trainable_state(base, directory)


def test_from_pretrained_on_a_partial_folder_fails_loudly(trained, tmp_path):
    name, model, _, directory = trained
    folder = tmp_path / "checkpoint-3"
    shutil.copytree(directory, folder)
    model.config.save_pretrained(folder)  # what a Trainer checkpoint folder carries next to the weights
    # from_pretrained looks for model.safetensors, pytorch_model.bin, their .index.json and model.<variant>.* forms
    assert not any(f.startswith(("model.", "pytorch_model")) for f in os.listdir(folder))
    assert "transformers_weights" not in (folder / "config.json").read_text()
    for load in (type(model).from_pretrained, tf.AutoModel.from_pretrained):
        with pytest.raises(OSError, match=r"no file named .*model\.safetensors"):
            load(folder)
    with pytest.raises(OSError, match="model.safetensors"):
        type(model).from_pretrained(folder, use_safetensors=True)


def copy_of(directory, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(directory, folder)
    return folder


def test_truncated_state_file(trained, tmp_path):
    name, _, plan, directory = trained
    folder = copy_of(directory, tmp_path)
    path = folder / STATE_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PartialCheckpointError, match="truncated"):
        load_trainable_state(fresh_base(name, plan), folder)


def test_corrupt_state_file_of_the_right_size(trained, tmp_path):
    name, _, plan, directory = trained
    folder = copy_of(directory, tmp_path)
    path = folder / STATE_FILE
    data = path.read_bytes()
    path.write_bytes(b"\xff" * 16 + data[16:])  # a header length beyond the file
    with pytest.raises(PartialCheckpointError, match="not a readable safetensors file"):
        load_trainable_state(fresh_base(name, plan), folder)


def test_truncated_or_edited_manifest(trained, tmp_path):
    name, _, plan, directory = trained
    folder = copy_of(directory, tmp_path)
    path = folder / MANIFEST_FILE
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(PartialCheckpointError, match="cannot be read"):
        load_trainable_state(fresh_base(name, plan), folder)
    path.write_text(text.replace('"state_bytes"', '"state_size"'))
    with pytest.raises(PartialCheckpointError, match="lacks"):
        load_trainable_state(fresh_base(name, plan), folder)


@pytest.mark.parametrize("missing", [STATE_FILE, MANIFEST_FILE, "folder"])
def test_missing_file(trained, tmp_path, missing):
    name, _, plan, directory = trained
    folder = copy_of(directory, tmp_path)
    if missing == "folder":
        shutil.rmtree(folder)
    else:
        os.remove(folder / missing)
    expected = MANIFEST_FILE if missing == "folder" else missing
    with pytest.raises(PartialCheckpointError, match=rf"{expected} is missing"):
        load_trainable_state(fresh_base(name, plan), folder)


def test_manifest_or_folder_from_another_model(trained, tmp_path):
    name, _, plan, directory = trained
    other_name = "llama" if name != "llama" else "bert"
    other = make(other_name)
    other_dir = tmp_path / "other"
    save_trainable_state(other, freeze_model(other, **MODELS[other_name][1]), other_dir)
    folder = copy_of(directory, tmp_path)
    shutil.copy(other_dir / MANIFEST_FILE, folder / MANIFEST_FILE)
    with pytest.raises(PartialCheckpointError, match="come from different saves"):
        load_trainable_state(fresh_base(name, plan), folder)
    with pytest.raises(PlanMismatchError, match="does not have"):
        load_trainable_state(fresh_base(name, plan), other_dir)


def test_plan_with_another_trainable_set_is_refused(trained):
    name, _, _, directory = trained
    model = make(name)
    plan = freeze_model(model, **{**MODELS[name][1], "freeze_layers": ":3"})
    with pytest.raises(PlanMismatchError, match="another set of parameters"):
        load_trainable_state(model, directory, plan=plan)


def test_another_dtype_is_refused(trained):
    name, _, _, directory = trained
    with pytest.raises(PlanMismatchError, match="dtype"):
        load_trainable_state(fresh_base(name).to(torch.bfloat16), directory)


def test_fingerprint_is_stable_and_samples_what_it_says():
    tensor = torch.arange(100_000, dtype=torch.float32).reshape(100, 1000)
    fingerprint = fingerprint_tensors([("w", tensor), ("b", torch.arange(7, dtype=torch.int64))])
    # A fixed value: the digest must not depend on the process, the run or the machine.
    assert fingerprint.digest == "f34bf7f8c73a126af4ca6e3f74bd8f5d86843050ed8f373a954985e9d5655d54"
    step, edge = tensor.numel() // SAMPLED_ELEMENTS, EDGE_BYTES // 4
    count = tensor.numel()
    sampled = set(range(0, step * SAMPLED_ELEMENTS, step)) | set(range(edge)) | set(range(count - edge, count))
    unsampled = next(i for i in range(edge, tensor.numel()) if i not in sampled)

    def digest_after_changing(index: int) -> str:
        changed = tensor.clone()
        changed.view(-1)[index] += 1
        return fingerprint_tensors([("w", changed)]).digest

    reference = fingerprint_tensors([("w", tensor)]).digest
    assert digest_after_changing(unsampled) == reference  # the documented blind spot
    assert digest_after_changing(step * 1000) != reference
    assert digest_after_changing(tensor.numel() - 1) != reference
    assert fingerprint_tensors([("w", tensor.double())]).digest != reference
    assert fingerprint_tensors([("w", tensor.reshape(1000, 100))]).digest != reference


def test_fingerprint_covers_a_tie_once_and_survives_gradual_unfreezing(tmp_path):
    model = make("llama")
    plan = freeze_model(model, freeze_embeddings=True, freeze_layers=":3", train_head=False)
    names = frozen_tensor_names(model, plan)
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    at_start = fingerprint_frozen(model, plan)
    later = plan.with_trainable([n for n in plan.frozen_names if ".layers.2." in n], "unfreeze_strategy")
    files = save_trainable_state(model, later, tmp_path, fingerprint=at_start)
    assert fingerprint_frozen(model, later).digest in Path(files.manifest).read_text()
    load_trainable_state(make("llama"), tmp_path)


def test_sharded_or_meta_weights_are_refused(tmp_path):
    with torch.device("meta"):
        model = make("bert")
    plan = freeze_model(model, **MODELS["bert"][1])
    with pytest.raises(PartialCheckpointError, match="meta device"):
        save_trainable_state(model, plan, tmp_path)


def test_peft_adapter_and_data_parallel_wrapper_round_trip(tmp_path):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(3)  # the adapter's own initialisation: what the checkpoint must carry
    model = peft.get_peft_model(make("llama"), config)
    plan = freeze_model(model, train_head=False)
    assert plan.trainable_names and all(".lora_" in n for n in plan.trainable_names)
    save_trainable_state(torch.nn.DataParallel(model), plan, tmp_path)
    torch.manual_seed(4)
    restored = peft.get_peft_model(make("llama"), config)
    load_trainable_state(restored, tmp_path, plan=plan)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))


def test_errors_are_value_errors():
    assert issubclass(PartialCheckpointError, ValueError)
