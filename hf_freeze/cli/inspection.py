"""Check a freezing configuration against a model without reading its weights.

The model is built from its config on the meta device (tensors with a shape and no storage), so a
70B-parameter config costs a few hundred MB and a few seconds. The options are the ones a recipe
trains with, from keyword arguments or straight from the recipe's YAML file:

>>> plan = inspect_model("path/to/llama", freeze_layers=":70", plot="freeze_map.png")  # doctest: +SKIP
>>> plan = inspect_model(config="recipes/configs/my_run.yaml")                        # doctest: +SKIP
>>> print(plan.summary())                                                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ..core.spec import FreezeSpec
from ..errors import InvalidOptionError, ModelLoadError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

    from ..core.plan import FreezePlan

# task name -> transformers Auto class. `--task` accepts these (with "-" or "_").
TASKS: dict[str, str] = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "multiple-choice": "AutoModelForMultipleChoice",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "pretraining": "AutoModelForPreTraining",
    "speech-seq2seq": "AutoModelForSpeechSeq2Seq",
    "image-classification": "AutoModelForImageClassification",
    "audio-classification": "AutoModelForAudioClassification",
    "ctc": "AutoModelForCTC",
    "image-text-to-text": "AutoModelForImageTextToText",
    "semantic-segmentation": "AutoModelForSemanticSegmentation",
    "object-detection": "AutoModelForObjectDetection",
}

FREEZE_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(FreezeSpec))
MODEL_KEY = "model_name_or_path"


def normalize_task(task: str) -> str:
    """``"causal_lm"`` / ``"Causal-LM"`` -> ``"causal-lm"``; an unknown name is an error listing the valid."""
    name = task.strip().lower().replace("_", "-")
    if name not in TASKS:
        raise InvalidOptionError(f"`task`={task!r} is not valid: use one of {sorted(TASKS)}.")
    return name


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
        "1",
        "ON",
        "YES",
        "TRUE",
    )


def _looks_like_path(model: str) -> bool:
    """A Hub id is ``name`` or ``org/name``; anything else that does not exist is a missing path."""
    return model.startswith((".", "/", "~")) or model.endswith(".json") or model.count("/") > 1


def load_model_config(model: str) -> PretrainedConfig:
    """The config of a local model folder, a local ``config.json``, or a Hub id (fetched when online).

    Offline (``HF_HUB_OFFLINE=1``) a Hub id is read from the local cache only; if it is not there the
    error says so instead of waiting on the network.
    """
    from transformers import AutoConfig

    path = os.path.expanduser(model)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(
            f"MODEL {model!r} is a folder without config.json: point to a model folder or its config.json."
        )
    local = os.path.exists(path)
    if not local and _looks_like_path(model):
        raise ModelLoadError(
            f"MODEL {model!r}: no such file or folder. Give a model folder, a config.json or a Hub id."
        )
    offline = not local and _offline()
    try:
        # trust_remote_code=False: never run a model's own code, and never prompt for it.
        return AutoConfig.from_pretrained(path if local else model, local_files_only=offline, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        if offline:
            raise ModelLoadError(
                f"MODEL {model!r} is not a local folder or config.json, and offline mode (HF_HUB_OFFLINE=1) "
                "forbids fetching its config from the Hub (it is not in the local cache either). Unset "
                "HF_HUB_OFFLINE, or pass a local folder holding config.json."
            ) from None
        if "custom code" in str(err) or "trust_remote_code" in str(err):
            raise ModelLoadError(
                f"MODEL {model!r} needs its own code (trust_remote_code), which hf-freeze inspect does not "
                "run. Inspect a model whose architecture ships with transformers."
            ) from None
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "read the config file" if local else "fetch its config from the Hub"
        raise ModelLoadError(f"MODEL {model!r}: could not {where}: {first_line}") from None


def _auto_class(task: str):
    import transformers

    return getattr(transformers, TASKS[task])


def _maps(auto_cls, config: PretrainedConfig) -> type | None:
    try:
        found = auto_cls._model_mapping[type(config)]
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    return found[0] if isinstance(found, (list, tuple)) else found


def supported_tasks(config: PretrainedConfig) -> list[str]:
    """The ``--task`` values whose Auto class has a model for this config."""
    return [task for task in TASKS if _maps(_auto_class(task), config) is not None]


def infer_task(config: PretrainedConfig) -> str:
    """The task of ``config.architectures[0]`` (``LlamaForCausalLM`` -> ``causal-lm``); else ``base``."""
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        return "base"
    wanted = architectures[0]
    for task in TASKS:
        model_cls = _maps(_auto_class(task), config)
        if model_cls is not None and model_cls.__name__ == wanted:
            return task
    raise InvalidOptionError(
        f"The config's architectures={architectures!r} is not a class transformers can build for "
        f"model_type={getattr(config, 'model_type', None)!r}. Pick the head with `--task`, one of "
        f"{supported_tasks(config)}."
    )


def build_meta_model(
    model: str | PretrainedConfig, task: str | None = None, num_labels: int | None = None
) -> nn.Module:
    """Build the model of ``model`` (a path, Hub id or config) on the meta device: shapes, no weights.

    ``task`` picks the head (see :data:`TASKS`; default: the config's ``architectures``);
    ``num_labels`` sizes classification heads.
    """
    config = load_model_config(model) if isinstance(model, str) else model
    if num_labels is not None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise InvalidOptionError(f"`num_labels`={num_labels!r} is not valid: use a whole number >= 1, e.g. 3.")
        config = copy.deepcopy(config)  # the caller's config stays as it was
        config.num_labels = num_labels
    task = normalize_task(task) if task else infer_task(config)
    auto_cls = _auto_class(task)
    if _maps(auto_cls, config) is None:
        raise InvalidOptionError(
            f"`task`={task!r} does not fit model_type={getattr(config, 'model_type', None)!r} "
            f"({TASKS[task]} has no model for {type(config).__name__}). Tasks this config supports: "
            f"{supported_tasks(config)}."
        )
    import torch  # here, not at the top: `hf-freeze inspect --help` reads TASKS without torch

    try:
        with torch.device("meta"):
            return auto_cls.from_config(config)
    except (ValueError, RuntimeError, TypeError, AttributeError, NotImplementedError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(
            f"Could not build {TASKS[task]} for model_type={getattr(config, 'model_type', None)!r} on the "
            f"meta device: {first_line}. Try another `--task`, or check the config."
        ) from None


def read_recipe(path: str | os.PathLike) -> tuple[str | None, dict[str, Any]]:
    """``(model_name_or_path, freeze options)`` from a recipe YAML file.

    A recipe YAML mixes model, data and training arguments; only the :class:`FreezeSpec` keys and
    ``model_name_or_path`` matter here, the others are ignored. A key that is *almost* a freeze
    option (``freeze_layer``) is an error, so a typo cannot pass unnoticed. (No field of
    ``FreezingTrainingArguments`` is that close to a freeze option; a test keeps it so.) The same rules
    as ``hf-freeze inspect --config`` (:class:`~hf_freeze.FreezingArgumentParser`).
    """
    from ..parsing import load_config_file, select_config_keys

    data = load_config_file(path, option="config")
    options = select_config_keys(data, {*FREEZE_OPTIONS, MODEL_KEY}, str(path), ignore_unknown=True, option="config")
    model = options.pop(MODEL_KEY, None)
    return (str(model) if model is not None else None), options


def inspect_model(
    model: str | PretrainedConfig | None = None,
    *,
    config: str | os.PathLike | None = None,
    task: str | None = None,
    num_labels: int | None = None,
    plot: str | os.PathLike | None = None,
    **freeze_options: Any,
) -> FreezePlan:
    """Resolve the freezing options against ``model`` built on the meta device; return the plan.

    ``config`` is a recipe YAML file whose :class:`FreezeSpec` keys (and ``model_name_or_path``, when
    ``model`` is None) are used; ``freeze_options`` override them. ``plot`` saves the freeze map PNG.
    Raises the same errors as training would (``PatternNotFoundError``, ``LayerRangeError``, ...).
    """
    model, spec = merge_options(model, config, freeze_options)
    return run_inspection(model, spec, task, num_labels, plot)[0]


def merge_options(
    model: str | PretrainedConfig | None, config: str | os.PathLike | None, freeze_options: dict[str, Any]
) -> tuple[str | PretrainedConfig, FreezeSpec]:
    """The model and the validated spec: the recipe YAML's keys, overridden by ``freeze_options``."""
    options: dict[str, Any] = {}
    if config is not None:
        recipe_model, options = read_recipe(config)
        model = model if model is not None else recipe_model
    options.update(freeze_options)
    return require_model(model), FreezeSpec.from_dict(options)


def require_model(model: str | PretrainedConfig | None) -> str | PretrainedConfig:
    """``model``, or the error that says how to name one."""
    if model is None:
        raise InvalidOptionError(
            "No model given: pass MODEL (a model folder, config.json or Hub id) or set `model_name_or_path` "
            "in the `config` YAML."
        )
    return model


def run_inspection(
    model: str | PretrainedConfig,
    spec: FreezeSpec,
    task: str | None,
    num_labels: int | None,
    plot: str | os.PathLike | None,
) -> tuple[FreezePlan, str]:
    """Build ``model`` on the meta device for ``task``, resolve ``spec``, draw ``plot``: (plan, task used).

    The one path behind :func:`inspect_model` and ``hf-freeze inspect``.
    """
    if plot is not None:  # checked before any work; like any unwritable PNG path it is an environment error
        folder = os.path.dirname(os.path.abspath(plot))
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"`--plot`={str(plot)!r}: the folder {folder!r} does not exist. Create it first, or write the "
                "map into an existing folder, e.g. --plot freeze_map.png."
            )
    model_config = load_model_config(model) if isinstance(model, str) else model
    task = normalize_task(task) if task else infer_task(model_config)
    plan = spec.resolve(build_meta_model(model_config, task=task, num_labels=num_labels))
    if plot is not None:
        from .freeze_map import draw_freeze_map

        draw_freeze_map(plan, plot, model_name=model_display_name(model))
    return plan, task


def model_display_name(model: str | PretrainedConfig) -> str:
    """A short name for titles: the Hub id, ``parent/folder`` of a local model, or the config's name."""
    if not isinstance(model, str):
        return getattr(model, "_name_or_path", "") or type(model).__name__.replace("Config", "")
    path = os.path.expanduser(model)
    if not os.path.exists(path):
        return model  # a Hub id
    folder = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    parent, name = os.path.split(folder)
    return f"{os.path.basename(parent)}/{name}" if os.path.basename(parent) else name
