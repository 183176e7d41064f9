"""``hf-freeze inspect``: configs written here, models built on the meta device, plans checked
against the same options resolved on a real (randomly initialised) model of the same config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
import yaml

from hf_freeze import FreezePlan, FreezeSpec
from hf_freeze.cli import main
from hf_freeze.cli.freeze_map import FROZEN_COLOR, TRAINABLE_COLOR
from hf_freeze.cli.inspection import TASKS, inspect_model

TEXT = dict(vocab_size=99, hidden_size=16, num_attention_heads=2, intermediate_size=32)
CONFIGS = {
    "bert": lambda: tf.BertConfig(
        num_hidden_layers=4, num_labels=3, architectures=["BertForSequenceClassification"], **TEXT
    ),
    "gpt2": lambda: tf.GPT2Config(
        vocab_size=99,
        n_embd=16,
        n_layer=4,
        n_head=2,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    ),
    "llama": lambda: tf.LlamaConfig(
        num_hidden_layers=4, num_key_value_heads=1, architectures=["LlamaForCausalLM"], **TEXT
    ),
    "t5": lambda: tf.T5Config(
        vocab_size=99,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=3,
        num_decoder_layers=2,
        num_heads=2,
        architectures=["T5ForConditionalGeneration"],
    ),
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("configs")
    dirs = {}
    for name, make in CONFIGS.items():
        make().save_pretrained(root / name)
        dirs[name] = str(root / name)
    return dirs


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse usage errors and --help
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reference_plan(model_dir: str, **options) -> FreezePlan:
    """The same options resolved on a real model built from the same config (weights allocated)."""
    config = tf.AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = getattr(tf, config.architectures[0])(config)
    return FreezeSpec(**options).resolve(model)


# (model, command-line flags, the same options as FreezeSpec keywords)
CASES = [
    (
        "bert",
        ["--freeze-embeddings", "--freeze-layers", ":2", "--unfreeze", "layer.1.output"],
        dict(freeze_embeddings=True, freeze_layers=":2", unfreeze=["layer.1.output"]),
    ),
    ("gpt2", ["--freeze-layers", "3", "--freeze", "ln_f"], dict(freeze_layers="3", freeze=["ln_f"])),
    (
        "llama",
        ["--freeze", "mlp", "self_attn", "--unfreeze", r"layers\.3\.mlp", "--freeze-layers", "0,2"],
        dict(freeze=["mlp", "self_attn"], unfreeze=[r"layers\.3\.mlp"], freeze_layers="0,2"),
    ),
    (
        "t5",
        ["--freeze-layers", ":2", "--layer-stack", "encoder.block", "--no-train-head"],
        dict(freeze_layers=":2", layer_stack="encoder.block", train_head=False),
    ),
]


@pytest.mark.parametrize("name,flags,options", CASES, ids=[c[0] for c in CASES])
def test_table_matches_real_model(model_dirs, capsys, name, flags, options):
    code, out, err = run_cli(["inspect", model_dirs[name], *flags], capsys)
    assert code == 0, err
    reference = reference_plan(model_dirs[name], **options)
    assert reference.summary() in out
    assert reference.table() in out
    assert reference.total_numel > reference.trainable_numel > 0
    for option, hits in reference.pattern_hits.items():
        for pattern, count in hits.items():
            assert f"{option} '{pattern}': {count} parameter(s)" in out  # as typed, backslashes not doubled


@pytest.mark.parametrize("name,flags,options", CASES, ids=[c[0] for c in CASES])
def test_json_equals_real_model_plan(model_dirs, capsys, name, flags, options):
    code, out, err = run_cli(["inspect", model_dirs[name], *flags, "--json"], capsys)
    assert code == 0, err
    plan = FreezePlan.from_json(out)
    reference = reference_plan(model_dirs[name], **options)
    assert plan.to_dict() == reference.to_dict()
    assert plan.plan_hash == reference.plan_hash


def test_tied_weights_reported(model_dirs, capsys):
    code, out, _ = run_cli(["inspect", model_dirs["gpt2"]], capsys)
    assert code == 0
    assert "tied: transformer.wte.weight = lm_head.weight" in out
    code, out, _ = run_cli(["inspect", model_dirs["bert"]], capsys)
    assert "tied: none" in out


def test_verbose_lists_every_parameter_with_its_rule(model_dirs, capsys):
    code, out, _ = run_cli(["inspect", model_dirs["bert"], "--freeze-layers", ":2", "-v"], capsys)
    assert code == 0
    reference = reference_plan(model_dirs["bert"], freeze_layers=":2")
    lines = out.splitlines()
    for p in reference.params:
        line = next(line for line in lines if line.split() and line.split()[0] == p.name)
        assert line.split()[-2:] == ["trainable" if p.trainable else "frozen", p.rule]


def test_png_freeze_map(model_dirs, capsys, tmp_path):
    from matplotlib.image import imread

    for name, flags, _ in CASES[:3]:
        png = tmp_path / f"{name}.png"
        code, out, err = run_cli(["inspect", model_dirs[name], *flags, "--plot", str(png)], capsys)
        assert code == 0, err
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(png)
        assert pixels.shape[:2] == (500, 1200)
        rgb = (pixels[..., :3] * 255).round().astype(int)
        for color in (TRAINABLE_COLOR, FROZEN_COLOR):  # both kinds of bar are drawn
            want = torch.tensor([int(color[i : i + 2], 16) for i in (1, 3, 5)])
            assert (torch.from_numpy(rgb) == want).all(-1).sum() > 500, (name, color)


def test_png_all_trainable_has_no_frozen_bars(model_dirs, tmp_path):
    from matplotlib.image import imread

    png = tmp_path / "all.png"
    inspect_model(model_dirs["llama"], plot=png)
    rgb = torch.from_numpy((imread(png)[..., :3] * 255).round().astype(int))
    frozen = torch.tensor([int(FROZEN_COLOR[i : i + 2], 16) for i in (1, 3, 5)])
    trainable = torch.tensor([int(TRAINABLE_COLOR[i : i + 2], 16) for i in (1, 3, 5)])
    assert (rgb == trainable).all(-1).sum() > 5000
    assert (rgb == frozen).all(-1).sum() < 400  # only the legend's patch


def test_python_entry_point_equals_cli(model_dirs, capsys):
    plan = inspect_model(model_dirs["bert"], freeze_embeddings=True, freeze_layers=":2")
    code, out, _ = run_cli(
        ["inspect", model_dirs["bert"], "--freeze-embeddings", "--freeze-layers", ":2", "--json"], capsys
    )
    assert code == 0 and plan.to_dict() == FreezePlan.from_json(out).to_dict()
    config_file = os.path.join(model_dirs["bert"], "config.json")  # a config.json path works as MODEL too
    assert inspect_model(config_file, freeze_embeddings=True, freeze_layers=":2").plan_hash == plan.plan_hash


def test_plot_without_matplotlib(model_dirs, capsys, monkeypatch, tmp_path):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    code, _, err = run_cli(["inspect", model_dirs["bert"], "--plot", str(tmp_path / "x.png")], capsys)
    assert code == 1
    assert err.strip() == 'hf-freeze: error: the freeze map needs matplotlib: pip install "hf-freeze[plot]"'
    assert not (tmp_path / "x.png").exists()


def test_plot_to_unwritable_path_exits_1(model_dirs, capsys, tmp_path):
    code, _, err = run_cli(["inspect", model_dirs["bert"], "--plot", str(tmp_path / "no" / "dir" / "x.png")], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("hf-freeze: error: ") and "x.png" in lines[0]


def _recipe(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_yaml_equals_flags_and_flags_override(model_dirs, capsys, tmp_path):
    recipe = _recipe(
        tmp_path,
        {
            "model_name_or_path": model_dirs["bert"],
            "train_file": "data/train.csv",  # data and training keys are ignored
            "max_length": 64,
            "output_dir": "outputs/x",
            "learning_rate": 3e-5,
            "layer_lr_decay": 0.9,
            "freeze_embeddings": True,
            "freeze_layers": ":2",
            "freeze": ["attention.self"],
            "unfreeze": ["layer.1.attention.self.query"],
            "train_head": True,
        },
    )
    flags = [
        "--freeze_embeddings",
        "--freeze-layers",
        ":2",
        "--freeze",
        "attention.self",
        "--unfreeze",
        "layer.1.attention.self.query",
        "--train_head",
        "true",
    ]
    code, from_yaml, err = run_cli(["inspect", "--config", recipe, "--json"], capsys)
    assert code == 0, err
    code, from_flags, _ = run_cli(["inspect", model_dirs["bert"], *flags, "--json"], capsys)
    assert json.loads(from_yaml) == json.loads(from_flags)

    code, overridden, _ = run_cli(
        ["inspect", "--config", recipe, "--freeze-layers", ":1", "--no-train-head", "--json"], capsys
    )
    code, expected, _ = run_cli(
        [
            "inspect",
            model_dirs["bert"],
            flags[0],
            "--freeze_layers",
            ":1",
            *flags[3:7],
            "--train-head",
            "false",
            "--json",
        ],
        capsys,
    )
    assert code == 0 and json.loads(overridden) == json.loads(expected) != json.loads(from_flags)
    plan = FreezePlan.from_json(overridden)
    assert plan.spec["freeze_layers"] == ":1" and plan.spec["train_head"] is False
    assert plan.decision("classifier.weight").rule == "requires_grad"  # no longer decided by train_head


def test_negative_layer_slice_as_separate_argument(model_dirs, capsys):
    code, separate, err = run_cli(["inspect", model_dirs["bert"], "--freeze-layers", "-2:", "--json"], capsys)
    assert code == 0, err
    code, attached, _ = run_cli(["inspect", model_dirs["bert"], "--freeze_layers=-2:", "--json"], capsys)
    assert separate == attached
    assert FreezePlan.from_json(separate).to_dict() == reference_plan(model_dirs["bert"], freeze_layers="-2:").to_dict()


def test_a_repeated_pattern_flag_keeps_every_value(model_dirs, capsys, tmp_path):
    repeated = ["--freeze", "embeddings", "--freeze", r"layer\.1", "--unfreeze", "a", "--unfreeze", "b"]
    code, out, err = run_cli(["inspect", model_dirs["bert"], *repeated, "--no-freeze-strict", "--json"], capsys)
    assert code == 0, err
    assert FreezePlan.from_json(out).spec["freeze"] == ["embeddings", r"layer\.1"]
    assert FreezePlan.from_json(out).spec["unfreeze"] == ["a", "b"]
    # flags replace the YAML list rather than adding to it
    recipe = _recipe(tmp_path, {"model_name_or_path": model_dirs["bert"], "freeze": ["pooler"]})
    code, out, err = run_cli(
        ["inspect", "--config", recipe, "--freeze", "embeddings", "--freeze", "layer.1", "--json"], capsys
    )
    assert code == 0, err
    assert FreezePlan.from_json(out).spec["freeze"] == ["embeddings", "layer.1"]


def test_every_freeze_spec_option_has_a_flag(capsys):
    code, out, _ = run_cli(["inspect", "--help"], capsys)
    assert code == 0
    for name in FreezeSpec.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in out
    unwrapped = "".join(out.split())  # argparse wraps long help lines, also at hyphens
    for task in TASKS:
        assert task in unwrapped


ERRORS = [
    # (model, args, exit code, words in the one-line error)
    ("bert", ["--freeze", "("], 2, "not a valid Python regular expression"),
    ("bert", ["--freeze", "nonexistent"], 2, "matched no parameter"),
    ("bert", ["--freeze-layers", ":10"], 2, "outside the stack"),
    ("bert", ["--freeze-layers", "abc"], 2, "cannot read 'abc'"),
    ("bert", ["--freeze", ".*", "--no-train-head"], 2, "no trainable parameter"),
    ("bert", ["--task", "translation"], 2, "`task`='translation' is not valid"),
    ("bert", ["--task", "image-classification"], 2, "does not fit model_type='bert'"),
    ("bert", ["--num-labels", "0"], 2, "`num_labels`=0"),
    ("bert", ["--layer-stack", "decoder"], 2, "`layer_stack`='decoder' matches no nn.ModuleList"),
    ("gpt2", ["--freeze-embeddings"], 2, "one tied tensor"),
    ("./no/such/model", [], 2, "no such file or folder"),
    ("EMPTY_DIR", [], 2, "folder without config.json"),
    ("CUSTOM_CODE", [], 2, "needs its own code (trust_remote_code)"),
]


@pytest.mark.parametrize("model,args,code,words", ERRORS, ids=[" ".join(e[1]) or e[0] for e in ERRORS])
def test_errors_are_one_line_with_exit_code(model_dirs, capsys, tmp_path, model, args, code, words):
    if model == "CUSTOM_CODE":
        config = {"model_type": "my_model", "auto_map": {"AutoConfig": "configuration_my.MyConfig"}}
        (tmp_path / "config.json").write_text(json.dumps(config))
    model = model_dirs.get(model, str(tmp_path) if model in ("EMPTY_DIR", "CUSTOM_CODE") else model)
    got, out, err = run_cli(["inspect", model, *args], capsys)
    assert got == code
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-freeze: error: ") and words in lines[0], err


USAGE_ERRORS = [
    ["inspect"],  # no MODEL and no --config
    ["inspect", "MODEL", "--train-head", "maybe"],
    ["inspect", "MODEL", "--no-such-flag"],
    ["inspect", "MODEL", "--num-labels", "three"],
    [],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=[" ".join(a) or "nothing" for a in USAGE_ERRORS])
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "error:" in err.strip().splitlines()[-1]


def test_yaml_errors(model_dirs, capsys, tmp_path):
    typo = _recipe(tmp_path, {"model_name_or_path": model_dirs["bert"], "freeze_layer": ":2"})
    code, _, err = run_cli(["inspect", "--config", typo], capsys)
    assert code == 2 and "'freeze_layer'" in err and "did you mean 'freeze_layers'" in err
    no_model = _recipe(tmp_path, {"freeze_layers": ":2"})
    code, _, err = run_cli(["inspect", "--config", no_model], capsys)
    assert code == 2 and "No model given" in err
    code, _, err = run_cli(["inspect", "--config", str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and "cannot be read" in err


def test_training_argument_keys_are_not_taken_for_typos(tmp_path):
    """Every FreezingTrainingArguments field may sit in a recipe YAML without being taken for a typo."""
    from dataclasses import fields

    from hf_freeze.cli.inspection import read_recipe
    from hf_freeze.training.arguments import FreezingTrainingArguments

    keys = {f.name: None for f in fields(FreezingTrainingArguments) if f.name not in FreezeSpec.__dataclass_fields__}
    model, options = read_recipe(_recipe(tmp_path, {**keys, "model_name_or_path": "m", "freeze_layers": 2}))
    assert model == "m" and options == {"freeze_layers": 2}


def test_strict_off_warns_and_succeeds(model_dirs, capsys):
    code, out, err = run_cli(
        ["inspect", model_dirs["bert"], "--freeze", "nonexistent", "--freeze-strict", "false"], capsys
    )
    assert code == 0
    assert "freeze 'nonexistent': 0 parameter(s)" in out
    assert "hf-freeze: WARNING:" in err and "matched no parameter" in err


@pytest.mark.slow
def test_meta_plan_equals_real_plan_across_architectures():
    """The meta-device model yields the same plan (names, shapes, groups, rules) as the real one."""
    from tiny_models import BUILDERS, build

    for name in BUILDERS:
        model = build(name)
        model.config.architectures = [type(model).__name__]
        layers = "all" if name == "albert" else ":1"  # ALBERT's layers share parameters in pairs
        for options in (dict(freeze_layers=layers), dict(freeze_embeddings=True, train_head=False)):
            plan = inspect_model(model.config, **options)
            assert plan.to_dict() == FreezeSpec(**options).resolve(model).to_dict(), (name, options)


def llama_70b_config() -> tf.LlamaConfig:
    return tf.LlamaConfig(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=128256,
        architectures=["LlamaForCausalLM"],
    )


def test_70b_config_on_meta_device():
    """Shapes only: every parameter stays on the meta device, and the totals match the config's arithmetic."""
    from hf_freeze.cli.inspection import build_meta_model

    config = llama_70b_config()
    model = build_meta_model(config)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    plan = inspect_model(config, freeze_layers=":70", freeze_embeddings=True)
    h, i, v, n = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    kv = h // config.num_attention_heads * config.num_key_value_heads
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    assert plan.total_numel == v * h + n * layer + h + v * h
    assert plan.trainable_numel == 10 * layer + h + v * h


def _console_script() -> str:
    script = Path(sys.executable).with_name("hf-freeze")
    if not script.exists():
        pytest.skip("the hf-freeze console script is not installed (pip install -e .)")
    return str(script)


@pytest.mark.slow
def test_console_script_and_offline_hub_id(model_dirs, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    done = subprocess.run(
        [_console_script(), "inspect", model_dirs["llama"], "--freeze-layers", ":2", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (
        FreezePlan.from_json(done.stdout).plan_hash == reference_plan(model_dirs["llama"], freeze_layers=":2").plan_hash
    )

    done = subprocess.run(
        [_console_script(), "inspect", "some-org/some-model"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-freeze: error: ") and "HF_HUB_OFFLINE=1" in lines[0], lines
