"""Evaluation metrics for the classification recipes: accuracy from ``evaluate``, or, offline
where its script is not cached, an equivalent local ``evaluate.Metric``.
"""

from __future__ import annotations


def accuracy_metric():
    """``evaluate``'s accuracy; offline (no cached script) an equivalent local ``evaluate.Metric``."""
    import datasets
    import evaluate

    try:
        return evaluate.load("accuracy", keep_in_memory=True)
    except (FileNotFoundError, ConnectionError, OSError, ValueError):
        pass

    class Accuracy(evaluate.Metric):
        def _info(self):
            return evaluate.MetricInfo(
                description="Fraction of predictions equal to the references.",
                citation="",
                features=datasets.Features(
                    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
                ),
            )

        def _compute(self, predictions, references):
            correct = sum(int(p == r) for p, r in zip(predictions, references))
            return {"accuracy": correct / max(len(references), 1)}

    return Accuracy(keep_in_memory=True)


def accuracy_from_logits():
    """``compute_metrics`` for classifiers: accuracy of the arg-max of the logits."""
    import numpy as np

    metric = accuracy_metric()

    def compute_metrics(prediction):
        predictions = np.argmax(prediction.predictions, axis=-1)
        return metric.compute(predictions=predictions, references=prediction.label_ids)

    return compute_metrics
