"""The recipes' data: a ``DatasetDict`` with ``train`` and ``validation`` from the Hub, local files
or the recipe's generated default, the column checks, and the label-to-id mapping.

Every check here raises before training starts, so bad input never writes to ``--output_dir``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hf_freeze.errors import InvalidOptionError

if TYPE_CHECKING:
    from recipe_args import DataArguments

DATA_FILE_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".txt": "text"}


def _check_file(option: str, path: str, allowed: Iterable[str]) -> str:
    if not os.path.isfile(path):
        raise InvalidOptionError(
            f"`{option}`={path!r}: no such file. Check the path (relative paths start from {os.getcwd()!r})."
        )
    ext = os.path.splitext(path)[1].lower()
    if ext not in allowed:
        raise InvalidOptionError(f"`{option}`={path!r}: unsupported extension {ext!r}; use one of {sorted(allowed)}.")
    return DATA_FILE_LOADERS[ext]


def load_raw_datasets(
    data_args: DataArguments,
    default: Callable[[], Any],
    seed: int = 42,
    file_types: Iterable[str] = (".csv", ".json", ".jsonl"),
):
    """A ``DatasetDict`` with ``train`` and ``validation``: from the Hub, local files, or the recipe's default.

    Without a validation split, ``validation_split_percentage`` of the training data is held out.
    """
    import datasets

    file_types = tuple(file_types)
    if data_args.dataset_name and data_args.train_file:
        raise InvalidOptionError(
            f"Both `dataset_name`={data_args.dataset_name!r} and `train_file`="
            f"{data_args.train_file!r} are set; give one of them."
        )
    if data_args.validation_file and not data_args.train_file:
        raise InvalidOptionError(f"`validation_file`={data_args.validation_file!r} needs a `train_file` too.")
    if data_args.dataset_name:
        try:
            raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
            raise InvalidOptionError(
                f"`dataset_name`={data_args.dataset_name!r} (config {data_args.dataset_config_name!r}) could not be "
                f"loaded: {err}. Check the name while online, or use --train_file/--validation_file."
            ) from None
    elif data_args.train_file:
        loader = _check_file("train_file", data_args.train_file, file_types)
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            if _check_file("validation_file", data_args.validation_file, file_types) != loader:
                raise InvalidOptionError(
                    f"`validation_file`={data_args.validation_file!r} is not the same format as "
                    f"`train_file`={data_args.train_file!r}."
                )
            files["validation"] = data_args.validation_file
        raw = datasets.load_dataset(loader, data_files=files)
    else:
        raw = default()
    if "validation" not in raw:
        if "train" not in raw:
            raise InvalidOptionError(f"The dataset has no 'train' split (splits: {list(raw)}).")
        if not 0 < data_args.validation_split_percentage < 100:
            raise InvalidOptionError(
                f"`validation_split_percentage`={data_args.validation_split_percentage} must be "
                "between 1 and 99 when the data has no validation split."
            )
        split = raw["train"].train_test_split(test_size=data_args.validation_split_percentage / 100, seed=seed)
        raw = datasets.DatasetDict({"train": split["train"], "validation": split["test"]})
    for name, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None:
            raw[name] = raw[name].select(range(min(limit, len(raw[name]))))
    return raw


def require_columns(dataset, **columns: str | None) -> None:
    """Each ``option=column`` must name a column of ``dataset``; the error lists the columns there are."""
    for option, column in columns.items():
        if column is not None and column not in dataset.column_names:
            raise InvalidOptionError(
                f"`{option}`={column!r} is not a column of the dataset; its columns are {dataset.column_names}. "
                f"Pass --{option} with one of them."
            )


def label_names(raw, label_column: str) -> list[str]:
    """The label names, in id order: a ``ClassLabel``'s names, else the sorted distinct training values."""
    feature = raw["train"].features[label_column]
    if hasattr(feature, "names"):
        return list(feature.names)
    for split in ("train", "validation"):
        for value in raw[split][label_column]:
            if value is None:
                raise InvalidOptionError(
                    f"`label_column`={label_column!r}: a {split} row has the label None; every row needs a "
                    "label (a class name or number)."
                )
            if isinstance(value, (list, tuple, dict)):
                raise InvalidOptionError(
                    f"`label_column`={label_column!r}: a {split} row has the label {value!r}; each row takes one "
                    "class (a name or number), not a list or mapping."
                )
    values = sorted({str(v) for v in raw["train"][label_column]})
    unseen = sorted({str(v) for v in raw["validation"][label_column]} - set(values))
    if unseen:
        raise InvalidOptionError(
            f"`label_column`={label_column!r}: the validation data has labels {unseen[:5]} that "
            "the training data lacks; every label must appear in training."
        )
    return values


def label_to_id_fn(raw, label_column: str, names: list[str]) -> Callable[[Any], int]:
    """How a raw label becomes an id (identity for ``ClassLabel`` columns)."""
    if hasattr(raw["train"].features[label_column], "names"):
        return int
    index = {name: i for i, name in enumerate(names)}
    return lambda value: index[str(value)]
