"""Builders shared by the tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED_HF_HOME = REPO.parent / "shared" / "hf-home"
FAKE = Path(__file__).with_name("fake_server.py")
# a venv that holds only a vllm dist-info: the fake server's engine has a version the result key can name
FAKE_VENV = Path(__file__).with_name("fake-venv")


def hf_home() -> Path | None:
    """The offline HF cache the tests use: $HF_HOME, else ../shared/hf-home."""
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"])
    return SHARED_HF_HOME if SHARED_HF_HOME.is_dir() else None


def nemotron(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (a subprocess), capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "nemotron.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=cwd or REPO,
    )


def in_this_lane(pid: int) -> bool:
    """Whether a process belongs to this test session's lane (scripts/lanes.py runs two sessions at once): its
    environment names the lane, as everything a test starts inherits, Slurm jobs submitted here included. Without
    lanes, every process does."""
    lane = os.environ.get("NEMOTRON_TEST_LANE")
    if lane is None:
        return True
    try:
        return f"NEMOTRON_TEST_LANE={lane}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False  # gone, or not ours to read


def scores(out: str) -> dict[tuple[str, str], float]:
    """(benchmark, metric) → value from the score table the CLI prints."""
    return {(b, m): float(v) for b, m, v in re.findall(r"^(\w+)\s+(\S+)\s+(\d\.\d{4})\b", out, re.M)}


def squeue() -> list[str]:
    """This project's server jobs in the Slurm queue. None in the local lane of scripts/lanes.py: Slurm cannot be
    reached from it (its SLURM_CONF is no Slurm config), so nothing of that lane can be queued."""
    if os.environ.get("NEMOTRON_TEST_LANE") == "local":
        return []
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if "nemotron-eval" in line]


def sacct_state(job_id: str) -> str:
    for _ in range(20):  # accounting lags a little behind the controller
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
                             capture_output=True, text=True).stdout.split()
        if out:
            return out[0]
        time.sleep(0.5)
    return ""


def fake_request(tmp_path, *fake_args, tasks=("gsm8k",), extra=()):
    """The flow's parameters for the `local` config served by the fake server."""
    overrides = [
        f"deployment.command={sys.executable} {FAKE} --tag {tmp_path} {' '.join(fake_args)}",
        f"deployment.venv={FAKE_VENV}", "deployment.extra_args=''", "deployment.startup_timeout=20",
        f"evaluation.output_dir={tmp_path}", f"evaluation.hf_home={hf_home()}",
        "evaluation.nemo_evaluator_config.config.params.limit_samples=1",
        "evaluation.nemo_evaluator_config.config.params.max_retries=0",
        "evaluation.retries=0", "evaluation.retry_delay=0", *extra,
    ]
    return {"config": "local", "overrides": overrides, "tasks": list(tasks)}


def answered(log: Path) -> int:
    """Completion requests a vLLM server answered (its access log)."""
    return log.read_text().count('"POST /v1/completions HTTP/1.1" 200') if log.exists() else 0


def kill_server_once_it_answered(run_root: Path, proc: subprocess.Popen, count: int, name: str = "server") -> int:
    """SIGKILL the server process `name` (a replica: server-replica-N) and its children (the engine) once its log
    shows `count` answers; returns the answers it had."""
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        for record in run_root.glob(f"*/{name}.json"):
            job_dir = Path(json.loads(record.read_text())["job_dir"])
            if answered(job_dir / "server.log") >= count and (job_dir / "server.pid").exists():
                pid = (job_dir / "server.pid").read_text().strip()
                children = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
                subprocess.run(["kill", "-9", pid, *children], check=True)
                return answered(job_dir / "server.log")
        time.sleep(0.2)
    return 0
