"""A Prefect API outage mid-run (issue 28): the run goes on and its records stay whole. The Prefect server here is
the test's own (its own database and port), stopped for 60 s while benchmarks run and started again on the same
database and port, as an operator restarting it would."""

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import FAKE, FAKE_VENV, hf_home

pytestmark = pytest.mark.waits  # a minute of outage each: scripts/lanes.py runs them beside the CPU-heavy tests

OUTAGE_SECONDS = 60


@contextlib.contextmanager
def prefect_server(home: Path, port: int):
    """`prefect server start` on `port` with its database under `home`, once it answers; stopped after."""
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    with (home / "server.log").open("a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                 str(port), "--analytics-off"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()


def test_a_prefect_outage_of_60s_mid_run_is_waited_out_and_the_records_are_whole(tmp_path):
    from nemotron.serving.endpoints import free_port

    home = Path(tempfile.mkdtemp(prefix="prefect-outage-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    journal = tmp_path / "journal"
    cmd = [sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", "local", "-t", "gsm8k", "-t",
           "gsm8k_cot_zeroshot",
           f"deployment.command={sys.executable} {FAKE} --tag {tmp_path} --delay 1.0 --journal {journal}",
           f"deployment.venv={FAKE_VENV}", "deployment.extra_args=''", "deployment.startup_timeout=20",
           f"evaluation.output_dir={tmp_path}", f"evaluation.hf_home={hf_home()}",
           "evaluation.tasks=[{name: gsm8k}, {name: gsm8k_cot_zeroshot}]",
           "evaluation.nemo_evaluator_config.config.params.limit_samples=50", "evaluation.in_flight=1",
           "evaluation.nemo_evaluator_config.config.params.max_retries=0", "evaluation.retries=0"]
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "COLUMNS": "200"}
    with prefect_server(home, port) as server:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 300
            while (not journal.exists() or journal.read_text().count("request") < 5) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stdout.read()[-3000:]
                time.sleep(0.5)
            os.killpg(server.pid, 9)
            server.wait()
            down = time.monotonic()
            time.sleep(OUTAGE_SECONDS)
            assert proc.poll() is None, "the run ended during the outage: " + proc.stdout.read()[-4000:]
            with prefect_server(home, port):
                up = time.monotonic()
                out, _ = proc.communicate(timeout=600)
                assert journal.read_text().count("request") > 5
                with httpx.Client(base_url=api) as client:
                    runs = client.post("/flow_runs/filter", json={}).json()
                    (run,) = [r for r in runs if r["name"].startswith("eval-")]
                    tasks = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        finally:
            proc.kill()
    assert up - down >= OUTAGE_SECONDS
    assert proc.returncode == 0, out[-5000:]
    assert run["state_type"] == "COMPLETED", run
    assert {t["name"]: t["state_type"] for t in tasks if "benchmark" in t["tags"]} == {
        "gsm8k": "COMPLETED", "gsm8k_cot_zeroshot": "COMPLETED"}
    (results,) = tmp_path.glob("*/*/results.json")
    doc = json.loads(results.read_text())
    assert [(r["benchmark"], r["status"]) for r in doc["results"]] == [("gsm8k", "completed"),
                                                                       ("gsm8k_cot_zeroshot", "completed")]
    manifest = json.loads((results.parent / "manifest.json").read_text())
    assert manifest["flow_run_id"] == run["id"]


def test_a_prefect_api_gone_when_the_benchmarks_end_is_waited_for_then_the_run_fails_saying_where_its_results_are(
        tmp_path):
    """The server stopped mid-run and never started again: the benchmarks finish, the run waits run.api_wait s for the
    API it records the scores through, then fails in one line naming the results it left on disk; no traceback.
    Prefect's own client retries are cut to one (PREFECT_CLIENT_MAX_RETRIES=1) so that the engine's failed report of
    the end takes seconds, not the minutes of its default backoff."""
    from nemotron.serving.endpoints import free_port

    home = Path(tempfile.mkdtemp(prefix="prefect-gone-"))
    port = free_port()
    journal = tmp_path / "journal"
    cmd = [sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", "local", "-t", "gsm8k",
           f"deployment.command={sys.executable} {FAKE} --tag {tmp_path} --delay 0.5 --journal {journal}",
           f"deployment.venv={FAKE_VENV}", "deployment.extra_args=''", "deployment.startup_timeout=20",
           f"evaluation.output_dir={tmp_path}", f"evaluation.hf_home={hf_home()}", "run.api_wait=15",
           "evaluation.nemo_evaluator_config.config.params.limit_samples=12", "evaluation.in_flight=1",
           "evaluation.nemo_evaluator_config.config.params.max_retries=0", "evaluation.retries=0"]
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(home),
           "PREFECT_CLIENT_MAX_RETRIES": "1", "COLUMNS": "200"}
    with prefect_server(home, port) as server:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while (not journal.exists() or journal.read_text().count("request") < 3) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.2)
            os.killpg(server.pid, 9)
            server.wait()
            gone = time.monotonic()
            out, err = proc.communicate(timeout=400)
            ended = time.monotonic()
        finally:
            proc.kill()
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    (results,) = tmp_path.glob("*/*/results.json")
    assert [(r["benchmark"], r["status"]) for r in json.loads(results.read_text())["results"]] == [
        ("gsm8k", "completed")]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: the Prefect API at http://127.0.0.1:{port}/api did not answer for run.api_wait=15 "
                           f"s after the benchmarks ended: the results are in {results} and scores.md beside it"), err
    assert "Traceback" not in err, err[-3000:]
    assert 15 <= ended - gone < 120
    # the API still gone: `eval status` shows what this machine recorded, the failure with it
    run_id = re.search(r"eval export (\S+)`", last).group(1)
    status = subprocess.run([sys.executable, "-m", "nemotron.cli", "nano3", "eval", "status", run_id[:8]], env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert f"error     the Prefect API at http://127.0.0.1:{port}/api did not answer for run.api_wait=15 s" \
        in status.stdout, status.stdout
