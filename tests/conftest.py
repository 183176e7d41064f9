import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers on a 2-core machine) each worker, and what it starts,
    keeps torch to one intra-op thread: two workers with two OpenMP threads each oversubscribe the cores, and
    tiny models then spend most of a step in spin-waits."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _restore_environment():
    """Each test leaves ``os.environ`` as it found it.

    ``TrainingArguments.__post_init__`` hands settings to Accelerate through environment variables and never
    takes them back: after one test built arguments with ``torch_compile=True``, every later ``Trainer`` in
    the same process (on transformers 4.57, which reads ``ACCELERATE_DYNAMO_BACKEND`` from there) compiled
    its model with inductor, which moved losses by about 1e-3 and broke activation checkpointing.
    """
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
