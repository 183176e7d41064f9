"""Launch a worker script on two CPU processes with ``accelerate launch`` (gloo), as the distributed tests do.

The worker must request the CPU itself (``use_cpu=True``); see ../shared notes on distributed CPU runs.
A timeout or a failed launch fails the test with the tail of the workers' stderr.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from transformers import __version__ as transformers_version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# transformers 4.57 resumes a multi-process run with torch.load(map_location=args.device), which torch cannot
# restore on CPU ("cpu:0"); 5.x maps to "cpu". GPU runs are unaffected.
skip_cpu_ddp_resume_on_4x = pytest.mark.skipif(
    int(transformers_version.split(".")[0]) < 5,
    reason="transformers 4.57's Trainer cannot resume a multi-process CPU run (torch.load with map_location='cpu:0')",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(
    worker: str, *args: str, timeout: int, processes: int = 2, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``worker`` on ``processes`` processes from the repository root; fail the test if it does not exit 0
    (``check=False``: return whatever exit code it ended with; a timeout still fails the test)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), worker, *args,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the launcher's agent then stops the ranks it started (each in a session of its
        # own); SIGKILL to the launcher's group if it does not end, so no rank is left hanging for long.
        process.terminate()
        try:
            stdout, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        pytest.fail(f"{os.path.basename(worker)} timed out after {timeout}s; stderr tail:\n{stderr[-4000:]}")
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if check and done.returncode != 0:
        pytest.fail(f"{os.path.basename(worker)} failed (rc={done.returncode}); stderr tail:\n{done.stderr[-6000:]}")
    return done
