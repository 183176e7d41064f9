"""The recipes end to end on small slices of their offline defaults, their input checks, the shipped configs.

Recipes run in-process through their ``main(args)`` (one interpreter, no re-import cost); one test
runs a recipe as a script to check the command-line path (summary, exit code of a bad input).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import importlib.util
import json
import os

import pytest
import recipe_args
import recipe_models
import recipe_run
import torch
import yaml
from demo_data import LABEL_NAMES, sentiment_examples, sentiment_splits
from safetensors.torch import load_file

from hf_freeze import PLAN_FILE, FreezePlan, InvalidOptionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--max_steps", "2", "--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none"]


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", os.path.join(ROOT, "recipes", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tiny_text_model(directory: str) -> str:
    """A 4-layer BERT classifier (no dropout) with the MiniLM tokenizer, saved like a Hub model folder."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(recipe_models.default_minilm_path()).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> str:
    return make_tiny_text_model(str(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> tuple[str, str]:
    """Train/validation CSVs with string labels, so the label mapping is exercised."""
    directory = tmp_path_factory.mktemp("csv")
    paths = []
    for split, rows in (("train", sentiment_examples(48, seed=3)), ("dev", sentiment_examples(16, seed=4))):
        path = str(directory / f"{split}.csv")
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["review", "sentiment"])
            writer.writeheader()
            for row in rows:
                writer.writerow({"review": row["text"], "sentiment": "pos" if row["label"] else "neg"})
        paths.append(path)
    return paths[0], paths[1]


def dir_snapshot(directory) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, directory)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def assert_run_outputs(out: str, *, tokenizer: bool = True) -> FreezePlan:
    for name in ("config.json", "model.safetensors", PLAN_FILE, "all_results.json", "trainer_state.json"):
        assert os.path.isfile(os.path.join(out, name)), f"{name} missing from {os.listdir(out)}"
    if tokenizer:
        assert os.path.isfile(os.path.join(out, "tokenizer.json"))
    return FreezePlan.load(out)


# --------------------------------------------------------------------------- demo data
def test_demo_data_is_deterministic_disjoint_and_balanced():
    a, b = sentiment_splits(train_size=300, eval_size=100), sentiment_splits(train_size=300, eval_size=100)
    assert a["train"]["text"] == b["train"]["text"] and a["validation"]["label"] == b["validation"]["label"]
    assert not set(a["train"]["text"]) & set(a["validation"]["text"])
    assert a["train"].features["label"].names == LABEL_NAMES
    assert 0.4 < sum(a["train"]["label"]) / 300 < 0.6
    texts = " ".join(a["train"]["text"])
    for marker in ("not", "but", "although", "hardly", "absolutely"):
        assert f" {marker} " in f" {texts} "


def test_demo_labels_need_more_than_word_counting():
    """A bag-of-words classifier stays near chance: negation and contrast decide the label."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    data = sentiment_splits(train_size=1200, eval_size=400)
    vectorizer = CountVectorizer()
    features = vectorizer.fit_transform(data["train"]["text"])
    model = LogisticRegression(max_iter=2000).fit(features, data["train"]["label"])
    accuracy = model.score(vectorizer.transform(data["validation"]["text"]), data["validation"]["label"])
    assert accuracy < 0.65, accuracy


def test_review_corpus_is_generated_and_deterministic(tmp_path, monkeypatch):
    from demo_data import review_corpus

    corpus = review_corpus()
    monkeypatch.chdir(tmp_path)  # nothing is read from the checkout
    assert review_corpus() == corpus
    assert len(corpus) == 300 and len(set(corpus)) == 300 and all(p.endswith(".") for p in corpus)


# --------------------------------------------------------------------------- parser
def test_yaml_gives_defaults_and_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {"learning_rate": 3.0e-4, "freeze_layers": ":2", "max_length": 40, "output_dir": str(tmp_path / "out")}
        )
    )
    model_args, data_args, args = recipe_args.parse_recipe_args(
        {"learning_rate": 1e-5, "freeze_embeddings": True}, ["--config", str(config), "--freeze_layers=-1:"]
    )
    assert args.learning_rate == 3e-4  # YAML beats the recipe default
    assert args.freeze_layers == "-1:"  # the flag beats YAML
    assert args.freeze_embeddings is True and data_args.max_length == 40 and model_args.model_name_or_path is None
    _, _, positional = recipe_args.parse_recipe_args({}, [str(config)])  # a lone YAML path works like --config
    assert positional.freeze_layers == ":2"


def test_repeated_list_flags_and_a_negative_slice_as_written(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"freeze": ["pooler"], "output_dir": str(tmp_path / "out")}))
    _, _, args = recipe_args.parse_recipe_args(
        {}, ["--config", str(config), "--freeze", "embeddings", "--freeze", r"layer\.1", "--freeze_layers", "-2:"]
    )
    assert args.freeze == ["embeddings", r"layer\.1"]  # both flags kept; together they replace the YAML list
    assert args.freeze_layers == "-2:"


def test_recipe_help_lists_config_and_negative_slices():
    import subprocess
    import sys

    script = os.path.join(ROOT, "recipes", "text_classification.py")
    env = {**os.environ, "PYTHONPATH": ROOT, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "--config FILE" in text and "--freeze_layers -2:" in text and "repeating the flag adds" in text


def test_unknown_yaml_key_is_an_error_with_a_hint(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rate: 1.0e-4\nfreeze_layer: ':4'\n")
    with pytest.raises(InvalidOptionError, match=r"freeze_layer.*did you mean 'freeze_layers'"):
        recipe_args.parse_recipe_args({}, ["--config", str(config)])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "recipes", "configs", "*.yaml"))))
def test_shipped_recipe_configs_parse(path):
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    _, data_args, args = recipe_args.parse_recipe_args({}, ["--config", path])
    assert args.output_dir == data["output_dir"]
    assert args.learning_rate == data["learning_rate"] and isinstance(args.learning_rate, float)
    expected = data.get("freeze_layers")
    assert args.freeze_spec.freeze_layers == (None if expected == "none" else expected)


def test_help_text_renders():
    assert "--freeze_layers" in recipe_args.make_parser().format_help()


def test_config_overrides_parse_and_reject_unknown_keys():
    from transformers import BertConfig

    config = recipe_models.apply_config_overrides(BertConfig(), "hidden_dropout_prob=0,hidden_act=relu")
    assert config.hidden_dropout_prob == 0 and config.hidden_act == "relu"
    with pytest.raises(InvalidOptionError, match="no attribute 'hiden_size'"):
        recipe_models.apply_config_overrides(BertConfig(), "hiden_size=4")


def test_loss_kwargs_trap_detection(tmp_path):
    """BERT ignores num_items_in_batch, so Trainer must not scale its loss by the process count; Llama uses it.

    Where BERT's forward takes ``**kwargs`` (transformers 5) the helper has to switch the scaling off; where it
    does not (4.57) Trainer already leaves the loss alone and the helper must not touch the model.
    """
    import inspect

    from tiny_models import build
    from transformers import Trainer, TrainingArguments

    bert, llama = build("bert"), build("llama")
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(type(bert).forward).parameters.values())
    assert recipe_models.disable_unused_loss_kwargs(bert) is takes_kwargs
    assert ("accepts_loss_kwargs" in vars(bert)) is takes_kwargs
    assert not recipe_models.disable_unused_loss_kwargs(llama) and "accepts_loss_kwargs" not in vars(llama)
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to="none")
    assert Trainer(model=bert, args=args).model_accepts_loss_kwargs is False
    assert Trainer(model=llama, args=args).model_accepts_loss_kwargs is True


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_text_classification_default_from_flags(tmp_path):
    """The offline default (pretrained MiniLM, generated data): frozen weights are the pretrained ones."""
    out = str(tmp_path / "out")
    metrics = load_recipe("text_classification").main(
        [
            "--output_dir",
            out,
            "--max_train_samples",
            "64",
            "--max_eval_samples",
            "32",
            "--per_device_train_batch_size",
            "16",
            *QUICK,
        ]
    )
    plan = assert_run_outputs(out)
    assert "eval_accuracy" in metrics
    assert plan.spec["freeze_embeddings"] is True and plan.spec["freeze_layers"] == ":4"
    with open(os.path.join(out, "config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["id2label"] == {"0": "negative", "1": "positive"}
    pretrained = load_file(os.path.join(recipe_models.default_minilm_path(), "model.safetensors"))
    trained = load_file(os.path.join(out, "model.safetensors"))
    frozen = [p.name for p in plan.params if not p.trainable]
    assert any("embeddings" in n for n in frozen) and any("layer.3." in n for n in frozen)
    for name in frozen:
        assert torch.equal(trained[name], pretrained[name.removeprefix("bert.")]), name
    changed = [
        p.name
        for p in plan.params
        if p.trainable
        and p.name.removeprefix("bert.") in pretrained
        and not torch.equal(trained[p.name], pretrained[p.name.removeprefix("bert.")])
    ]
    assert any("layer.5." in n for n in changed)


@pytest.mark.slow
def test_text_classification_from_yaml_with_local_csv(tmp_path, tiny_text_model, sentiment_csv, capsys, monkeypatch):
    train, dev = sentiment_csv
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    from trainbench.perf_callback import StepPerfCallback

    step_timer = StepPerfCallback(str(tmp_path / "perf.json"))  # the GPU check's step timer
    out = str(tmp_path / "out")
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": tiny_text_model,
                "train_file": train,
                "validation_file": dev,
                "text_column": "review",
                "label_column": "sentiment",
                "output_dir": out,
                "max_steps": 50,
                "freeze_embeddings": True,
                "freeze_layers": ":2",
                "per_device_train_batch_size": 8,
                "save_strategy": "no",
                "report_to": "none",
            }
        )
    )
    load_recipe("text_classification").main(
        ["--config", str(config), "--max_steps", "2", "--disable_tqdm", "true"], callbacks=[step_timer]
    )
    summary = capsys.readouterr().out.split("== hf-freeze text_classification: done ==")[-1]
    assert "trainable:" in summary and "eval_accuracy:" in summary and os.path.abspath(out) in summary
    plan = assert_run_outputs(out)
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as handle:
        assert json.load(handle)["global_step"] == 2  # the flag overrode the YAML's max_steps
    with open(os.path.join(out, "config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["label2id"] == {"neg": 0, "pos": 1}
    assert {p.layer for p in plan.params if p.rule == "freeze_layers"} == {0, 1}
    with open(tmp_path / "perf.json", encoding="utf-8") as handle:
        perf = json.load(handle)
    assert perf["steps"] == 2 and perf["median_step_s"] > 0 and perf["trainable_params"] == plan.trainable_numel


@pytest.mark.slow
def test_causal_lm_offline_default_from_yaml_and_flags(tmp_path):
    out = str(tmp_path / "out")
    config = os.path.join(ROOT, "recipes", "configs", "causal_lm.yaml")
    metrics = load_recipe("causal_lm").main(
        ["--config", config, "--output_dir", out, "--max_length", "32", "--max_eval_samples", "8", *QUICK]
    )
    plan = assert_run_outputs(out)
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as handle:
        assert json.load(handle)["global_step"] == 2  # the flag overrode the YAML's epochs
    assert metrics["perplexity"] > 1
    frozen_layers = {p.layer for p in plan.params if p.rule == "freeze_layers"}
    assert frozen_layers == {0, 1}
    assert all(p.trainable for p in plan.params if p.group == "head")
    assert not any(p.trainable for p in plan.params if p.group == "embeddings")


@pytest.mark.slow
def test_image_classification_offline_default_from_flags(tmp_path):
    """Digits + small ResNet: frozen BatchNorm statistics are bitwise the initial ones after training."""
    from transformers import set_seed

    recipe = load_recipe("image_classification")
    out = str(tmp_path / "out")
    recipe.main(["--output_dir", out, "--max_train_samples", "128", "--max_eval_samples", "64", *QUICK])
    plan = assert_run_outputs(out, tokenizer=False)
    set_seed(42)
    initial = recipe.ResNetForImageClassification(recipe.small_resnet([str(i) for i in range(10)])).state_dict()
    trained = load_file(os.path.join(out, "model.safetensors"))
    assert plan.frozen_norms, "the frozen stages' BatchNorm layers should be listed in the plan"
    for module in plan.frozen_norms:
        for stat in ("running_mean", "running_var"):
            assert torch.equal(trained[f"{module}.{stat}"], initial[f"{module}.{stat}"]), module
    top = [k for k in trained if k.startswith("resnet.encoder.stages.2.") and k.endswith("running_mean")]
    assert top and any(not torch.equal(trained[k], initial[k]) for k in top), "trainable stage statistics should move"


# --------------------------------------------------------------------------- bad input
def _bad_input_cases(tiny_model: str, csv_files: tuple[str, str], tmp_path) -> dict[str, tuple[list[str], str]]:
    train, _ = csv_files
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("learning_rate: 1.0e-4\nnum_epochs: 3\n")
    local = ["--model_name_or_path", tiny_model, "--text_column", "review", "--label_column", "sentiment"]
    return {
        "missing data file": (
            [*local, "--train_file", str(tmp_path / "nope.csv"), "--overwrite_output_dir"],
            r"`train_file`=.*no such file",
        ),
        "label column": (
            [
                "--model_name_or_path",
                tiny_model,
                "--train_file",
                train,
                "--text_column",
                "review",
                "--label_column",
                "stars",
                "--overwrite_output_dir",
            ],
            r"`label_column`='stars' is not a column.*sentiment",
        ),
        "unknown yaml key": (
            ["--config", str(bad_yaml), "--overwrite_output_dir"],
            r"Unknown key.*num_epochs.*num_train_epochs",
        ),
        "model path": (
            [
                *local,
                "--train_file",
                train,
                "--model_name_or_path",
                str(tmp_path / "no_model"),
                "--overwrite_output_dir",
            ],
            r"`model_name_or_path`=.*no_model.*not a model folder",
        ),
        "previous run": ([*local, "--train_file", train], r"`output_dir`=.*previous run.*--overwrite_output_dir"),
        "hub dataset offline": (
            [*local, "--dataset_name", "someone/no_such_dataset", "--overwrite_output_dir"],
            r"`dataset_name`='someone/no_such_dataset'.*could not be loaded",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["missing data file", "label column", "unknown yaml key", "model path", "previous run", "hub dataset offline"],
)
def test_bad_input_fails_before_training_and_keeps_output(case, tmp_path, tiny_text_model, sentiment_csv, monkeypatch):
    recipe = load_recipe("text_classification")

    def no_training(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(recipe, "FreezingTrainer", no_training)
    out = tmp_path / "previous"
    out.mkdir()
    (out / "all_results.json").write_text('{"eval_accuracy": 0.9}')
    (out / "config.json").write_text("{}")
    before = dir_snapshot(out)
    args, message = _bad_input_cases(tiny_text_model, sentiment_csv, tmp_path)[case]
    with pytest.raises(InvalidOptionError, match=message):
        recipe.main([*args, "--output_dir", str(out), "--report_to", "none"])
    assert dir_snapshot(out) == before


def test_overwrite_output_dir_and_resume_pass_the_guard(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    _, data_args, args = recipe_args.parse_recipe_args({}, ["--output_dir", str(out), "--overwrite_output_dir"])
    recipe_run.check_output_dir(args, data_args)
    _, data_args, args = recipe_args.parse_recipe_args({}, ["--output_dir", str(tmp_path / "fresh")])
    recipe_run.check_output_dir(args, data_args)


def test_run_turns_bad_input_into_one_error_line_and_exit_code_2(capsys):
    def main():
        raise InvalidOptionError("`train_file`='x.csv': no such file.")

    with pytest.raises(SystemExit) as exited:
        recipe_run.run(main)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == "error: `train_file`='x.csv': no such file."


def test_run_recipe_file_names_a_missing_script(tmp_path):
    """The wrappers that add test/benchmark callbacks fail clearly on a wrong recipe path."""
    with pytest.raises(InvalidOptionError, match=r"no_recipe\.py.*no such recipe script"):
        recipe_run.run_recipe_file(str(tmp_path / "no_recipe.py"), [], [])


# --------------------------------------------------------------------------- accelerate configs
CONFIGS = ["single_gpu", "multi_gpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "multi_node", "cpu_ddp"]


@pytest.mark.parametrize("name", CONFIGS)
def test_accelerate_config_loads_and_documents_its_launch(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = os.path.join(ROOT, "accelerate_configs", f"{name}.yaml")
    config = ClusterConfig.from_yaml_file(path)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert text.startswith("# When:"), "each config opens with when to use it"
    command = f"accelerate launch --config_file accelerate_configs/{name}.yaml"
    launch = [line for line in text.splitlines() if command in line]
    assert launch and "recipes/" in launch[0], "the header names the one command that launches a recipe with it"
    fsdp = config.fsdp_config or {}
    if fsdp:
        assert fsdp.get("fsdp_version") == 2 or fsdp.get("fsdp_use_orig_params") is True
    expected = {"single_gpu": 1, "cpu_ddp": 2}
    if name in expected:
        assert config.num_processes == expected[name]
    if name == "cpu_ddp":
        assert str(config.distributed_type) in ("MULTI_GPU", "DistributedType.MULTI_GPU") and "--use_cpu" in text
