"""perf/scale.py at a production in-flight budget over the SSH login node (issue 28): the figures are printed by
the script (README: Scale); what a test can hold it to is that every request arrives and is answered."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, hf_home

pytestmark = pytest.mark.cluster  # the flow over the login node's forward, its upstream a Slurm job


def test_scale_at_budget_2048_over_ssh_answers_every_request(tmp_path):
    """The flow with `--run local-slurm-ssh`, the instant upstream as its Slurm job, a budget of 2048: every request
    the harnesses sent reached the upstream through the gate and the SSH forward, and none failed."""
    out = tmp_path / "scale"
    r = subprocess.run([sys.executable, str(REPO / "perf" / "scale.py"), "--ssh", "local-slurm-ssh", "--limit", "50",
                        "--in-flight", "2048", "--skip-lm-eval", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "HF_HOME": str(hf_home()),
                            "NEMOTRON_ENV_FILE": str(REPO / "config" / "env.example.toml")})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    figures = json.loads((out / "scale.json").read_text())["flow"]
    assert figures["rc"] == 0, (out / "flow.log").read_text()[-3000:]
    assert figures["gate_failed"] == 0 and figures["gate_requests"] == 400  # one per choice of 50 samples of each task
    assert figures["upstream"]["requests"] == figures["gate_requests"] + 1  # and the flow's capability probe
    assert "req/s while sending" in r.stdout and "peak fds" in r.stdout
