"""The flow against a fault-injecting fake endpoint: failures are named, recorded, and cleaned up.

The real end-to-end path (vLLM serving SmolLM2) is tests/test_e2e.py; this fake only injects faults.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL

from flows.eval import nano3_eval
from nemotron.serving import runtime
from tests import fake_wandb_api, wandb_offline
from tests.helpers import FAKE, FAKE_VENV, fake_request, hf_home, nemotron


def leftovers(tmp_path) -> str:
    """Processes still running from this test's folder: servers, harness runs."""
    out = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines() if "pgrep" not in line)


def summary(tmp_path) -> dict:
    (path,) = tmp_path.glob("*/*/results.json")
    return json.loads(path.read_text())


def test_failed_benchmark_is_named_and_the_others_recorded_and_exported(tmp_path, monkeypatch):
    """The model is a W&B artifact (`rl:latest`, looked up through a fake `wandb.Api`) whose recorded
    checkpoint path is the built-in model; the export is real W&B in offline mode."""
    checkpoint = str(runtime.builtin_model_dir("smollm2-135m-instruct"))
    api = fake_wandb_api.install(monkeypatch, {"team/nemotron/nano3-rl-model:latest": {
        "qualified_name": "team/nemotron/nano3-rl-model:v3", "digest": "a1" * 16, "aliases": ["latest", "step_100"],
        "metadata": {"step": 100, "absolute_path": checkpoint}}})
    wandb_dir = tmp_path / "wandb-dir"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    request = fake_request(tmp_path, "--fail-logprobs", tasks=("gsm8k", "arc_challenge"), extra=[
        "run.model=rl:latest", "run.wandb.entity=team", "run.wandb.project=nemotron",
        "evaluation.nemo_evaluator_config.config.params.limit_samples=2"])  # two samples: a stderr
    state = nano3_eval(**request, return_state=True)
    assert state.is_failed()
    assert "1/2 benchmarks failed: arc_challenge" in state.message
    assert api.calls == ["team/nemotron/nano3-rl-model:latest"]  # resolved once, in the flow
    doc = summary(tmp_path)
    status = {r["benchmark"]: r["status"] for r in doc["results"]}
    assert status == {"gsm8k": "completed", "arc_challenge": "failed"}
    gsm8k = next(r for r in doc["results"] if r["benchmark"] == "gsm8k")
    assert {s["metric"] for s in gsm8k["scores"]} >= {"exact_match__strict-match"}
    assert not leftovers(tmp_path)

    with get_client(sync_client=True) as client:
        flow_tags = client.read_flow_run(state.state_details.flow_run_id).tags
        tasks_run = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))
        artifacts = {a.key: a for a in client.read_artifacts(
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))}
    model_tags = {"model:team/nemotron/nano3-rl-model:v3", "stage:rl"}  # the version evaluated, not the alias
    assert model_tags <= set(flow_tags)
    benchmarks = [t for t in tasks_run if "benchmark" in t.tags]
    assert {t.name for t in benchmarks} == {"gsm8k", "arc_challenge"}
    assert all(model_tags <= set(t.tags) for t in benchmarks)
    assert any(t.name.startswith("wandb-export") for t in tasks_run)  # the export subflow
    assert {"nano3-rl-model-scores", "nano3-rl-model-summary", "nano3-eval-progress"} <= set(artifacts)
    assert "**arc_challenge failed**" in artifacts["nano3-rl-model-summary"].data
    assert "exact_match__strict-match" in str(artifacts["nano3-rl-model-scores"].data)

    # `eval status RUN` / `eval logs RUN` read the same API and the run's files
    api = {"PREFECT_API_URL": PREFECT_API_URL.value()}
    run_id = str(state.state_details.flow_run_id)
    status = nemotron("nano3", "eval", "status", run_id[:8], env=api)
    assert status.returncode == 0, status.stderr
    assert f"({run_id})" in status.stdout and "flow      Failed: 1/2 benchmarks failed: arc_challenge" in status.stdout
    assert re.search(r"server +local job \S+ on this machine: CANCELLED", status.stdout)
    assert re.search(r"gsm8k +Completed +exact_match__flexible-extract \d\.\d{4}", status.stdout)
    assert re.search(r"arc_challenge +Failed +\(infrastructure failure, 1 attempt\(s\): BenchmarkError", status.stdout)
    logs = nemotron("nano3", "eval", "logs", run_id, env=api)
    assert logs.returncode == 0 and "running gsm8k" in logs.stdout
    assert "--- server.log (last 40 lines) ---" in logs.stdout
    assert nemotron("nano3", "eval", "status", "no-such-run", env=api).returncode == 2

    # W&B: one offline run, with what succeeded, the failure, the table, the results artifact, the input
    (run,) = wandb_offline.runs(wandb_dir)
    manifest = json.loads((tmp_path / "rl-latest").glob("*/manifest.json").__next__().read_text())
    assert run.run_id == manifest["evaluation_id"] and run.run.job_type == "evaluation"
    assert (run.run.entity, run.run.project, run.run.run_group) == ("team", "nemotron", "nano3-rl-model")
    assert run.config["model"]["resolved"] == "team/nemotron/nano3-rl-model:v3"
    assert run.config["model"]["digest"] == "a1" * 16 and run.config["model"]["checkpoint_path"] == checkpoint
    gsm8k = next(r for r in doc["results"] if r["benchmark"] == "gsm8k")
    for score in gsm8k["scores"]:
        assert float(run.summary[f"gsm8k/{score['metric']}"]) == score["value"]
        assert float(run.summary[f"gsm8k/{score['metric']}_stderr"]) == score["stderr"]
    assert int(run.summary["gsm8k/samples"]) == gsm8k["scores"][0]["samples"] == 2
    assert json.loads(run.summary["arc_challenge/status"]) == "failed"
    table = run.table("scores")
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert {(r["benchmark"], r["metric"]) for r in rows} >= {("gsm8k", "exact_match__strict-match"),
                                                               ("arc_challenge", "FAILED")}
    results = run.artifact("evaluation-results")
    files = {c.path for c in results.manifest.contents}
    assert {"manifest.json", "results.json", "gsm8k/results.yml", "arc_challenge/run_eval.log"} <= files
    assert not any("cache" in f for f in files)
    meta = json.loads(results.metadata)
    assert meta["inputs"] == ["team/nemotron/nano3-rl-model:v3"] and meta["failed"] == ["arc_challenge"]
    assert manifest["model"]["resolved"] == "team/nemotron/nano3-rl-model:v3"
    assert set(manifest["benchmarks"]) == {"gsm8k", "arc_challenge"} and "nemo-evaluator" in manifest["harness"]
    assert "--served-model-name" in manifest["server"]["command"]

    # exporting the same evaluation again updates that W&B run (same id), it does not add one
    again = nemotron("nano3", "eval", "export", run_id[:8], env={**api, "WANDB_MODE": "offline",
                                                                  "WANDB_DIR": str(wandb_dir)})
    assert again.returncode == 0, again.stderr[-2000:]
    assert [r.run_id for r in wandb_offline.runs(wandb_dir)] == [run.run_id, run.run_id]


def attempts_in(run_dir: str) -> int:
    """How many times the harness was started in a benchmark folder (each attempt logs a header)."""
    return (Path(run_dir) / "run_eval.log").read_text().count("# nemotron: run_eval")


@pytest.mark.waits
def test_benchmark_over_its_timeout_is_stopped_retried_then_failed(tmp_path):
    request = fake_request(tmp_path, "--delay 600", extra=["evaluation.timeout=25", "evaluation.retries=1"])
    state = nano3_eval(**request, return_state=True)
    assert state.is_failed() and "gsm8k" in state.message
    (result,) = summary(tmp_path)["results"]
    assert result["status"] == "failed" and "TimeoutError" in result["error"]
    assert result["failure"] == "infrastructure" and result["attempts"] == attempts_in(result["output_dir"]) == 2
    assert not leftovers(tmp_path)


def test_overloaded_endpoint_is_retried_until_it_answers_and_a_rerun_sends_nothing(tmp_path):
    """503 on the first request, the harness retrying nothing itself: an infrastructure failure, so
    the benchmark is tried again (into the same folder) and completes. The fake server journals its
    starts and requests: running the same evaluation again starts it not at all; served another way, it is
    served again."""
    journal = tmp_path / "journal"
    request = fake_request(tmp_path, "--fail-first 1", "--journal", str(journal), extra=["evaluation.retries=2"])
    state = nano3_eval(**request, return_state=True)
    assert state.is_completed(), state.message
    (result,) = summary(tmp_path)["results"]
    assert result["status"] == "completed" and attempts_in(result["output_dir"]) == 2
    served = journal.read_text()
    assert served.count("start") == 1 and served.count("request") >= 2

    again = nano3_eval(**request, return_state=True)
    assert again.is_completed()
    assert journal.read_text() == served  # no server start, no request
    (rerun,) = json.loads((Path(again.result().run_dir) / "results.json").read_text())["results"]
    assert rerun["reused"] and rerun["scores"] == result["scores"]

    # issue 26: served another way (another dtype) is another model: served again and scored anew, not reused
    bf16 = fake_request(tmp_path, "--fail-first 1", "--journal", str(journal),
                        extra=["evaluation.retries=2", "deployment.extra_args=--dtype bfloat16"])
    third = nano3_eval(**bf16, return_state=True)
    assert third.is_completed(), third.message
    assert journal.read_text().count("start") == 2
    (anew,) = json.loads((Path(third.result().run_dir) / "results.json").read_text())["results"]
    assert not anew["reused"] and anew["output_dir"] != result["output_dir"]
    manifest = json.loads((Path(third.result().run_dir) / "manifest.json").read_text())
    assert manifest["serving"]["dtype"] == "bfloat16" and manifest["serving"]["engine"] == "vllm"


def test_an_engine_from_the_nodes_path_is_scored_anew_each_run_and_its_reported_version_recorded(tmp_path,
                                                                                                 monkeypatch):
    """Issue 26: `vllm` from the PATH (no venv, no command): nothing here can name its version, so a second run
    of the same evaluation serves and scores anew instead of reusing; the version the server reports is in the
    manifest, and `eval compare` reads it (the same reported version: comparable)."""
    journal, bin_dir = tmp_path / "journal", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text(f"#!/bin/sh\nshift\nexec {sys.executable} {FAKE} --tag {tmp_path} "
                                  f"--journal {journal} --reports-version 0.9.9 \"$@\"\n")
    (bin_dir / "vllm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    request = fake_request(tmp_path, extra=["deployment.command=null", "deployment.venv=null"])
    runs = [nano3_eval(**request, return_state=True) for _ in range(2)]
    assert all(r.is_completed() for r in runs), [r.message for r in runs]
    assert journal.read_text().count("start") == 2  # served twice: the second run reused nothing
    folders = [Path(r.result().run_dir) for r in runs]
    (first,), (second,) = (json.loads((f / "results.json").read_text())["results"] for f in folders)
    assert not second["reused"] and second["output_dir"] != first["output_dir"]
    manifest = json.loads((folders[1] / "manifest.json").read_text())
    assert manifest["serving"]["vllm"] == "unknown (the server node's PATH)"
    assert manifest["server"]["engine_version"] == "0.9.9"
    out = nemotron("nano3", "eval", "compare", *map(str, folders))
    assert out.returncode == 0, out.stderr
    assert "not comparable:" not in out.stdout and "0 not comparable" in out.stdout, out.stdout


@pytest.mark.waits
def test_a_relaunch_that_never_becomes_healthy_still_records_what_finished(tmp_path):
    """Issue 26: the server dies under the third benchmark and its relaunch never comes up; the two that finished
    are in results.json and the summary artifact, and the run fails naming the one that is missing."""
    journal = tmp_path / "journal"
    names = ("gsm8k", "gsm8k_cot_zeroshot", "gsm8k_cot_llama")
    request = fake_request(tmp_path, "--die-after", "2", "--never-healthy-on-restart", "--journal", str(journal),
                           tasks=names, extra=[
        "evaluation.tasks=[{name: gsm8k}, {name: gsm8k_cot_zeroshot}, {name: gsm8k_cot_llama}]",
        "evaluation.max_parallel=1", "deployment.max_restarts=1", "deployment.health_interval=1"])
    state = nano3_eval(**request, return_state=True)
    assert state.is_failed()
    assert "not healthy after 20 s" in state.message and "1/3 benchmarks failed: gsm8k_cot_llama" in state.message
    assert journal.read_text().count("start") == 2  # the launch, and the relaunch that never came up
    doc = summary(tmp_path)
    assert [(r["benchmark"], r["status"]) for r in doc["results"]] == [
        ("gsm8k", "completed"), ("gsm8k_cot_zeroshot", "completed"), ("gsm8k_cot_llama", "failed")]
    assert "not run: " in doc["results"][2]["error"]
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))}
    table = next(a for k, a in artifacts.items() if k.endswith("-summary")).data
    assert "| gsm8k |" in table and "| gsm8k_cot_zeroshot |" in table
    assert not leftovers(tmp_path)


def test_an_export_that_fails_fails_the_run_naming_it_and_the_results_stay(tmp_path, monkeypatch):
    """Issue 26: W&B refusing the export (a fault injected in our export call) leaves every result on disk and
    in Prefect, and the run ends Failed saying so and how to export again: an unexported run has no lineage."""
    from nemotron.records import wandb_export

    def refused(*a, **k):
        raise RuntimeError("wandb: 503 Service Unavailable")

    monkeypatch.setattr(wandb_export, "export_within", refused)  # the flow's call: the export runs in a child
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    request = fake_request(tmp_path, extra=["run.wandb.entity=team", "run.wandb.project=nemotron"])
    state = nano3_eval(**request, return_state=True)
    assert state.is_failed()
    assert "W&B export failed: " in state.message and "503 Service Unavailable" in state.message
    assert "nemotron nano3 eval export " in state.message
    (result,) = summary(tmp_path)["results"]
    assert result["status"] == "completed"


def test_configuration_failure_is_not_retried(tmp_path):
    request = fake_request(tmp_path, tasks=("arc_challenge",), extra=[
        "evaluation.retries=2", "evaluation.nemo_evaluator_config.config.params.extra.tokenizer=/no/such/tokenizer"])
    state = nano3_eval(**request, return_state=True)
    assert state.is_failed()
    (result,) = summary(tmp_path)["results"]
    assert result["failure"] == "configuration" and result["attempts"] == attempts_in(result["output_dir"]) == 1


def test_server_that_never_becomes_healthy_fails_within_the_startup_timeout(tmp_path):
    request = fake_request(tmp_path, "--never-healthy", extra=["deployment.startup_timeout=6"])
    state = nano3_eval(**request, return_state=True)
    assert state.is_failed()
    assert "not healthy after 6 s" in state.message and "still loading weights" in state.message
    assert not leftovers(tmp_path)


@pytest.mark.waits
def test_harnesses_start_while_the_model_loads_and_their_requests_wait_for_it(tmp_path):
    """Issue 17: the harness starts once the server process runs, not once it is healthy; the gate holds its first
    requests until /health answers, then they go through."""
    request = fake_request(tmp_path, "--healthy-after", "25", tasks=("gsm8k",), extra=["deployment.startup_timeout=60"])
    state = nano3_eval(**request, return_state=True)
    assert state.is_completed(), state.message
    (run,) = (p.parent for p in tmp_path.glob("*/*/results.json"))
    (launch,) = json.loads((run / "in-flight.json").read_text())
    log = (run / "gsm8k" / "run_eval.log").read_text()
    harness_started = float(re.search(r"^# nemotron: run_eval \S+ at ([0-9.]+) ", log, re.M).group(1))
    assert harness_started < launch["opened"] - 10  # it started during the 25 s the model "loaded"
    assert launch["held_requests"] >= 1  # its requests came before the server was healthy
    assert launch["benchmarks"]["gsm8k"]["first_request"] >= launch["opened"]  # and went through after
    assert summary(tmp_path)["results"][0]["status"] == "completed"


def _cli_until_benchmark_runs(tmp_path):
    """Start the CLI against the fake server (answers slowly) and return once gsm8k is running."""
    overrides = [f"deployment.command={sys.executable} {FAKE} --tag {tmp_path} --delay 600",
                 f"deployment.venv={FAKE_VENV}",
                 "deployment.extra_args=''", "deployment.heartbeat_timeout=10", f"evaluation.output_dir={tmp_path}",
                 f"evaluation.hf_home={hf_home()}", "evaluation.retries=0"]
    # Ctrl-C reaches a CLI in the foreground of a terminal: SIGINT at its default even if the tests
    # themselves run where it is ignored (the background of a script, as CI may start them)
    proc = subprocess.Popen([sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", "local", "-t", "gsm8k",
                             *overrides], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "running gsm8k" in line or time.monotonic() > deadline:
            break
    assert any("running gsm8k" in s for s in seen), "".join(seen[-20:])
    # keep reading: a CLI blocked on a full pipe would not get to stop its server
    threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True).start()
    time.sleep(3)
    assert "fake_server.py" in leftovers(tmp_path), "the fake server should be up"
    return proc, seen


def test_ctrl_c_stops_the_server(tmp_path):
    """SIGINT to the CLI while benchmarks run: the server job is cancelled, nothing is left."""
    proc, seen = _cli_until_benchmark_runs(tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the CLI did not stop within 60 s of Ctrl-C:\n" + "".join(seen[-40:])) from None
    finally:
        proc.kill()
    time.sleep(1)
    assert proc.returncode != 0
    assert not leftovers(tmp_path)


def test_killed_cli_leaves_no_server_and_no_harness(tmp_path):
    """SIGKILL gives the CLI no chance to clean up: its harness dies with it at once (issue 14: the reaper
    sees its stdin close), and the job script misses its heartbeat (10 s here) and stops the server."""
    proc, _ = _cli_until_benchmark_runs(tmp_path)
    assert "run_eval" in leftovers(tmp_path), "the harness should be running"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while "run_eval" in leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "run_eval" not in leftovers(tmp_path), f"a harness outlived the flow by 10 s:\n{leftovers(tmp_path)}"
    deadline = time.monotonic() + 30
    while "fake_server.py" in leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(1)
    assert "fake_server.py" not in leftovers(tmp_path)


def test_a_server_stopped_mid_suite_is_found_hung_relaunched_and_its_requests_sent_again(tmp_path):
    """Issue 28: the server is stopped (SIGSTOP) with requests in flight: it answers nothing and its health check
    hangs, but its process lives. Within deployment.hang_timeout it is judged hung, stopped for good and relaunched;
    the benchmark runs again in its folder and completes, and no stopped process is left behind."""
    journal = tmp_path / "journal"
    request = fake_request(tmp_path, "--delay", "0.3", "--journal", str(journal), extra=[
        "evaluation.nemo_evaluator_config.config.params.limit_samples=12", "evaluation.in_flight=4",
        "deployment.hang_timeout=4", "deployment.health_interval=0.5", "deployment.max_restarts=1"])
    stopped: list[int] = []

    def stop_once_it_answered() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_text().count("request") >= 4:
                for record in tmp_path.glob("*/*/server.json"):
                    pid = Path(json.loads(record.read_text())["job_dir"], "server.pid").read_text().strip()
                    os.kill(int(pid), signal.SIGSTOP)
                    stopped.append(int(pid))
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_once_it_answered, daemon=True)
    watcher.start()
    state = nano3_eval(**request, return_state=True)
    watcher.join(5)
    assert stopped, "the server never answered 4 requests"
    assert state.is_completed(), state.message
    (result,) = summary(tmp_path)["results"]
    assert result["status"] == "completed" and result["scores"]
    assert journal.read_text().count("start") == 2  # the launch and the relaunch after the hang
    run_dir = Path(state.result().run_dir)
    launches = json.loads((run_dir / "in-flight.json").read_text())
    assert len(launches) == 2 and launches[1]["benchmarks"]["gsm8k"]["requests"] >= 1
    deadline = time.monotonic() + 30  # the API log handler sends in batches, after the run ended here
    with get_client(sync_client=True) as client:
        while True:
            logs = [entry.message for entry in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
                any_=[state.state_details.flow_run_id])), limit=200)]
            hung = [m for m in logs if "answered none of its" in m and "hung (deployment.hang_timeout)" in m]
            if hung or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert hung, logs[-20:]
    with pytest.raises(ProcessLookupError):
        os.kill(stopped[0], 0)
    assert not leftovers(tmp_path)


def test_a_full_disk_stops_the_suite_naming_its_path_and_a_rerun_reuses_what_finished(tmp_path):
    """Issue 28: the results' disk fills up after the first of three benchmarks (a tmpfs of 16 MB, filled to the
    last byte). The benchmark that hits it fails as infrastructure naming the path, is not retried, the third is
    not started, and the run fails saying the disk is full. Nothing is left half-written: once space is freed, a
    rerun reuses the first benchmark and completes the suite."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        names = ("gsm8k", "gsm8k_cot_zeroshot", "gsm8k_cot_llama")
        request = fake_request(disk, tasks=names, extra=[
            "evaluation.tasks=[{name: gsm8k}, {name: gsm8k_cot_zeroshot}, {name: gsm8k_cot_llama}]",
            "evaluation.max_parallel=1", "evaluation.retries=2"])
        filler = disk / "filler"

        def fill_after_the_first() -> None:
            deadline = time.monotonic() + 300
            while not list(disk.glob("benchmarks/gsm8k-*/nemotron-result.json")) and time.monotonic() < deadline:
                time.sleep(0.02)
            with contextlib.suppress(OSError), filler.open("wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()

        threading.Thread(target=fill_after_the_first, daemon=True).start()
        state = nano3_eval(**request, return_state=True)
        assert state.is_failed()
        assert re.search(rf"the disk holding {re.escape(str(disk))}/\S+ is full \(No space left on device\)",
                         state.message), state.message
        folders = {name: next(disk.glob(f"benchmarks/{name}-*")) for name in names if list(disk.glob(
            f"benchmarks/{name}-*"))}
        first = json.loads((folders["gsm8k"] / "nemotron-result.json").read_text())
        assert first["result"]["status"] == "completed"
        assert not (folders["gsm8k_cot_llama"] / "run_eval.log").exists()  # never started
        with get_client(sync_client=True) as client:
            runs = {r.name: r for r in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))}
        hit = runs["gsm8k_cot_zeroshot"]
        assert hit.state.is_failed() and hit.run_count == 1  # a full disk is not retried
        assert "is full" in hit.state.message
        assert "gsm8k_cot_llama" not in runs
        assert not leftovers(tmp_path)

        filler.unlink()
        again = nano3_eval(**request, return_state=True)
        assert again.is_completed(), again.message
        doc = json.loads((Path(again.result().run_dir) / "results.json").read_text())
        assert [(r["benchmark"], r["status"], r["reused"]) for r in doc["results"]] == [
            ("gsm8k", "completed", True), ("gsm8k_cot_zeroshot", "completed", False),
            ("gsm8k_cot_llama", "completed", False)]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_reasoning_trace_is_stripped_before_the_answer_is_scored(tmp_path):
    """Issue 30: the endpoint answers `<think>The answer is 7.</think> The answer is 42.` (a reasoning model's
    answer) to gsm8k_cot_zeroshot, whose strict-match takes the first "The answer is N." it finds. As sent, the trace's
    7 is scored; with evaluation.chat.strip_reasoning, nemo-evaluator's adapter strips the trace and 42, the answer
    after it, is scored: in another folder (another key), not reused from the first run."""
    scored = {}
    for extra in ([], ["evaluation.chat.strip_reasoning={}"]):
        request = fake_request(tmp_path, "--think", tasks=("gsm8k_cot_zeroshot",), extra=extra)
        state = nano3_eval(**request, return_state=True)
        assert state.is_completed(), state.message
        (result,) = json.loads((Path(state.result().run_dir) / "results.json").read_text())["results"]
        assert not result["reused"]
        (samples,) = Path(result["output_dir"]).rglob("samples_gsm8k_cot_zeroshot_*.jsonl")
        strict = [json.loads(line) for line in samples.read_text().splitlines()]
        strict = [s for s in strict if s["filter"] == "strict-match"]
        scored[bool(extra)] = {s["filtered_resps"][0].rstrip(".") for s in strict}
    assert scored == {False: {"7"}, True: {"42"}}, scored
