"""scripts/lanes.py, the test command's two lanes: the local lane cannot reach the cluster, so a test that needs it
and is not marked `cluster` fails there every time, never by a chance meeting with the cluster lane's tests."""

import importlib.util
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("lanes", REPO / "scripts" / "lanes.py")
lanes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lanes)


def test_the_local_lane_reaches_neither_slurm_nor_the_login_node(tmp_path):
    env = lanes.lane_env("local", tmp_path)
    assert env["NEMOTRON_TEST_LANE"] == "local"
    ssh = subprocess.run(["ssh", "-p", "2222", "root@127.0.0.1", "true"], env=env, capture_output=True, text=True)
    assert ssh.returncode == 255 and "mark the test cluster" in ssh.stderr
    if shutil.which("squeue", path=env["PATH"]) is None:
        pytest.skip("no Slurm client on this machine: nothing to reach")
    queue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, timeout=30)
    assert queue.returncode != 0 and "TheLocalTestLaneHasNoSlurm" in queue.stderr  # at once: its SLURM_CONF
    cluster = lanes.lane_env("cluster", tmp_path)
    assert "SLURM_CONF" not in cluster or cluster["SLURM_CONF"] != env["SLURM_CONF"]
    assert cluster["PATH"] == lanes.os.environ.get("PATH", "")


def test_every_test_is_in_exactly_one_lane():
    """The lanes' -m expressions split the suite: no test runs twice, none is left out."""
    def collected(expression: str) -> set[str]:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "--noconftest", "-p",
                              "no:cacheprovider", *(["-m", expression] if expression else []), "tests"],
                             cwd=REPO, capture_output=True, text=True, timeout=300).stdout
        return {line for line in out.splitlines() if "::" in line}

    cluster, local, every = (collected(e) for e in (lanes.LANES["cluster"], lanes.LANES["local"], ""))
    assert cluster and local and not cluster & local and cluster | local == every
