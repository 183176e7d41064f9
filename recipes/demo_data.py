"""Offline data for the recipes' defaults: a generated sentiment dataset and a text corpus built from it.

The sentiment sentences are built so that counting positive and negative words is not enough:
every sentiment word appears as often in positive as in negative sentences, because of

* negation: "the film was not good" is negative, "the hotel was never boring" is positive;
* contrast: "the food was awful, but the staff were wonderful" takes the label of the clause
  after "but" ("although A, B" and "A; however, B" likewise);
* intensifiers and hedges: "very", "absolutely" leave the polarity as it is, "hardly" and
  "barely" flip it like a negation.

Everything is drawn from a seeded ``random.Random``, so every call, process and machine gets the
same sentences (the recipes' default run and the multi-process tests depend on that).

>>> from demo_data import sentiment_splits
>>> splits = sentiment_splits(train_size=2000, eval_size=400)   # doctest: +SKIP
>>> splits["train"][0]                                           # doctest: +SKIP
{'text': 'although the trip was dull, the guide was truly superb', 'label': 1}
"""

from __future__ import annotations

import random

LABEL_NAMES = ["negative", "positive"]

_SUBJECTS = [
    ("the movie", "was"),
    ("the film", "was"),
    ("this book", "was"),
    ("the restaurant", "was"),
    ("the service", "was"),
    ("the hotel", "was"),
    ("the concert", "was"),
    ("my new phone", "is"),
    ("the game", "was"),
    ("the show", "was"),
    ("the food", "was"),
    ("the staff", "were"),
    ("the album", "is"),
    ("this app", "is"),
    ("the trip", "was"),
    ("the lecture", "was"),
    ("the ending", "was"),
    ("the plot", "was"),
    ("the guide", "was"),
    ("the room", "was"),
    ("the coffee", "was"),
    ("the soundtrack", "is"),
    ("the museum", "was"),
    ("the seats", "were"),
]
_POSITIVE = [
    "good",
    "great",
    "excellent",
    "wonderful",
    "delightful",
    "enjoyable",
    "brilliant",
    "pleasant",
    "charming",
    "superb",
    "fantastic",
    "impressive",
    "lovely",
    "memorable",
]
_NEGATIVE = [
    "bad",
    "awful",
    "terrible",
    "boring",
    "disappointing",
    "dull",
    "poor",
    "horrible",
    "mediocre",
    "annoying",
    "dreadful",
    "painful",
    "forgettable",
    "tedious",
]
_INTENSIFIERS = ["very", "really", "extremely", "truly", "incredibly", "absolutely", "remarkably", "quite"]
_NEGATIONS = ["not", "never", "not at all", "far from"]  # "far from" reads before the adjective
_HEDGES = ["hardly", "barely"]  # flip the polarity like a negation
_CONTRASTS = ["{a}, but {b}", "although {a}, {b}", "{a}; however, {b}", "at first {a}, yet in the end {b}"]


def _clause(rng: random.Random, polarity: int) -> str:
    """One clause whose sentiment is ``polarity`` (1 positive, 0 negative)."""
    subject, verb = rng.choice(_SUBJECTS)
    kind = rng.random()
    if kind < 0.40:  # plain, optionally intensified
        adjective = rng.choice(_POSITIVE if polarity else _NEGATIVE)
        if rng.random() < 0.5:
            adjective = f"{rng.choice(_INTENSIFIERS)} {adjective}"
        return f"{subject} {verb} {adjective}"
    # Negated or hedged: the adjective has the opposite polarity of the clause.
    adjective = rng.choice(_NEGATIVE if polarity else _POSITIVE)
    if kind < 0.85:
        negation = rng.choice(_NEGATIONS)
        if negation == "not" and polarity == 0 and rng.random() < 0.5:
            adjective = f"{rng.choice(_INTENSIFIERS)} {adjective}"  # "not very good": still negative
        return f"{subject} {verb} {negation} {adjective}"
    return f"{subject} {verb} {rng.choice(_HEDGES)} {adjective}"


def _sentence(rng: random.Random) -> tuple[str, int]:
    label = rng.randrange(2)
    if rng.random() < 0.4:
        first = _clause(rng, 1 - label)
        return rng.choice(_CONTRASTS).format(a=first, b=_clause(rng, label)), label
    return _clause(rng, label), label


def sentiment_examples(n: int, seed: int = 0, exclude: set[str] | None = None) -> list[dict]:
    """``n`` distinct labelled sentences (``{"text", "label"}``), none of them in ``exclude``."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows = []
    for _ in range(100 * n + 1000):
        if len(rows) == n:
            break
        text, label = _sentence(rng)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": label})
    if len(rows) < n:
        raise ValueError(f"Could only generate {len(rows)} distinct sentences, asked for n={n}.")
    return rows


def sentiment_splits(train_size: int = 2400, eval_size: int = 600, seed: int = 0):
    """The generated dataset as a ``datasets.DatasetDict`` with disjoint ``train`` and ``validation``.

    The label feature is a ``ClassLabel`` named ``negative``/``positive``, so recipes write the
    label names into the model config.
    """
    import datasets

    train = sentiment_examples(train_size, seed=seed)
    validation = sentiment_examples(eval_size, seed=seed + 1, exclude={row["text"] for row in train})
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABEL_NAMES)})
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(train, features=features),
            "validation": datasets.Dataset.from_list(validation, features=features),
        }
    )


def review_corpus(paragraphs: int = 300, sentences: int = 4, seed: int = 0) -> list[str]:
    """Paragraphs of generated review sentences: a text corpus for the causal-LM demo.

    Generated, not read from files, so a checkout, an installed copy and every rank of a
    multi-process run train on the same text.
    """
    rows = sentiment_examples(paragraphs * sentences, seed=seed)
    return [
        ". ".join(row["text"] for row in rows[i : i + sentences]).capitalize() + "."
        for i in range(0, len(rows), sentences)
    ]
