"""What importing hf-freeze and asking for help cost: the heavy libraries stay out until they are used.

Each check runs in a fresh interpreter, where sys.modules shows exactly what was imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loaded_after(code: str) -> set[str]:
    """The top-level modules among the heavy ones that ``code`` left in sys.modules."""
    heavy = ("torch", "transformers", "datasets", "evaluate", "matplotlib")
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {heavy!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split("\n")[-2].split())


def test_import_hf_freeze_is_light():
    assert loaded_after("import hf_freeze; hf_freeze.FreezeSpec; import hf_freeze.options") == set()


def test_core_names_load_on_first_use():
    assert loaded_after("from hf_freeze import FreezePlan, freeze_model") == {"torch"}


HELP = """
from hf_freeze.cli import main
try:
    main({argv!r})
except SystemExit as exit_:
    assert exit_.code == 0, exit_.code
"""


@pytest.mark.parametrize("argv, allowed", [(["--help"], set()), (["inspect", "--help"], {"transformers"})])
def test_help_imports_no_torch(argv, allowed):
    if argv[0] == "inspect" and int(version("transformers").split(".")[0]) < 5:
        pytest.skip("transformers 4.57's HfArgumentParser imports torch; `hf-freeze --help` stays torch-free")
    assert loaded_after(HELP.format(argv=argv)) <= allowed
