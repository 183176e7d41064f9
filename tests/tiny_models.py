"""Tiny random models built from configs (no download), shared by the tests."""

from __future__ import annotations

import torch
import transformers as tf

TEXT = dict(vocab_size=99, hidden_size=16, num_attention_heads=2, intermediate_size=32)


def _seeded(build):
    def wrapper():
        torch.manual_seed(0)
        return build()

    return wrapper


BUILDERS = {
    "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(num_hidden_layers=4, **TEXT)),
    "roberta": lambda: tf.RobertaForSequenceClassification(
        tf.RobertaConfig(num_hidden_layers=4, max_position_embeddings=64, **TEXT)
    ),
    "distilbert": lambda: tf.DistilBertForSequenceClassification(
        tf.DistilBertConfig(vocab_size=99, dim=16, n_layers=4, n_heads=2, hidden_dim=32)
    ),
    "albert": lambda: tf.AlbertForSequenceClassification(
        tf.AlbertConfig(num_hidden_layers=4, embedding_size=8, num_hidden_groups=2, **TEXT)
    ),
    "deberta_v2": lambda: tf.DebertaV2ForSequenceClassification(
        tf.DebertaV2Config(num_hidden_layers=4, relative_attention=True, position_buckets=8, **TEXT)
    ),
    "electra": lambda: tf.ElectraForSequenceClassification(
        tf.ElectraConfig(num_hidden_layers=4, embedding_size=8, **TEXT)
    ),
    "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=99, n_embd=16, n_layer=4, n_head=2, n_positions=64)),
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=4, num_key_value_heads=1, **TEXT)),
    "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(num_hidden_layers=4, num_key_value_heads=1, **TEXT)),
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(num_hidden_layers=4, num_key_value_heads=1, **TEXT)),
    "mixtral": lambda: tf.MixtralForCausalLM(
        tf.MixtralConfig(num_hidden_layers=4, num_key_value_heads=1, num_local_experts=2, **TEXT)
    ),
    "t5": lambda: tf.T5ForConditionalGeneration(
        tf.T5Config(vocab_size=99, d_model=16, d_kv=8, d_ff=32, num_layers=3, num_decoder_layers=2, num_heads=2)
    ),
    "bart": lambda: tf.BartForConditionalGeneration(
        tf.BartConfig(
            vocab_size=99,
            d_model=16,
            encoder_layers=3,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            max_position_embeddings=64,
        )
    ),
    "vit": lambda: tf.ViTForImageClassification(
        tf.ViTConfig(
            image_size=16,
            patch_size=4,
            num_hidden_layers=4,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=3,
        )
    ),
    "swin": lambda: tf.SwinForImageClassification(
        tf.SwinConfig(
            image_size=16,
            patch_size=2,
            embed_dim=8,
            depths=[1, 2],
            num_heads=[1, 2],
            window_size=2,
            num_labels=3,
        )
    ),
    "convnext": lambda: tf.ConvNextForImageClassification(
        tf.ConvNextConfig(num_channels=3, num_stages=3, hidden_sizes=[8, 16, 16], depths=[1, 1, 2], num_labels=3)
    ),
    "resnet": lambda: tf.ResNetForImageClassification(
        tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1], num_labels=3)
    ),
    "wav2vec2": lambda: tf.Wav2Vec2ForSequenceClassification(
        tf.Wav2Vec2Config(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            conv_dim=(8, 8, 8),
            conv_stride=(4, 2, 2),
            conv_kernel=(8, 3, 3),
            num_conv_pos_embeddings=4,
            num_conv_pos_embedding_groups=2,
        )
    ),
    "clip": lambda: tf.CLIPModel(
        tf.CLIPConfig(
            text_config=dict(
                vocab_size=99,
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=32,
            ),
            vision_config=dict(
                hidden_size=16,
                num_hidden_layers=3,
                num_attention_heads=2,
                intermediate_size=32,
                image_size=16,
                patch_size=4,
            ),
            projection_dim=8,
        )
    ),
    "llava": lambda: tf.LlavaForConditionalGeneration(
        tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                image_size=16,
                patch_size=4,
            ),
            text_config=tf.LlamaConfig(num_hidden_layers=3, num_key_value_heads=1, **TEXT),
            image_token_index=98,
        )
    ),
}


def build(name: str) -> torch.nn.Module:
    """Build the tiny model ``name``, seeded so every process gets the same weights."""
    return _seeded(BUILDERS[name])()


class TokenData(torch.utils.data.Dataset):
    """Random token sequences with binary labels (seeded, so every run sees the same batches)."""

    def __init__(self, n: int = 16, length: int = 8):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randint(0, 99, (n, length), generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}
