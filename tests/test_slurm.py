"""`--run PROFILE` on a real single-node Slurm (scripts/slurm/slurm.sh, started by scripts/test.sh).

The real model in a Slurm job over SSH is tests/test_deployments.py's end-to-end run (a worker
runs it); here the attached CLI's faults use the fake server only to make a benchmark hang or the
server never become healthy.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from tests.helpers import FAKE, FAKE_VENV, REPO, hf_home, nemotron, sacct_state, scores, squeue

pytestmark = pytest.mark.cluster  # every test submits to the project's Slurm or reads its queue

ENV = {"NEMOTRON_ENV_FILE": str(REPO / "config" / "env.example.toml")}  # local-slurm and local-slurm-ssh


@pytest.fixture(scope="module", autouse=True)
def slurm():
    """The project's Slurm must be up (scripts/test.sh starts it): fail loudly, never skip."""
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() in ("idle", "mixed", "allocated"), \
        f"no single-node Slurm here: run `bash scripts/slurm/slurm.sh` ({r.stderr.strip() or r.stdout.strip()})"
    if squeue():  # left by an earlier, interrupted session: not this session's failure to judge
        subprocess.run(["scancel", "--name=nemotron-eval.server"], check=True)
        time.sleep(5)
    yield
    assert not squeue(), f"a test left server jobs behind: {squeue()}"


def fake_overrides(tmp_path, *fake_args):
    return [f"deployment.command={sys.executable} {FAKE} --tag {tmp_path} {' '.join(fake_args)}",
            f"deployment.venv={FAKE_VENV}", "deployment.extra_args=''", f"evaluation.output_dir={tmp_path}",
            f"evaluation.hf_home={hf_home()}", "evaluation.retries=0",
            "evaluation.nemo_evaluator_config.config.params.limit_samples=1"]


def test_dry_run_prints_the_sbatch_script_and_submits_nothing(tmp_path):
    secret = "wandb-secret-0123456789"
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", "--run", "local-slurm",
                 f"evaluation.output_dir={tmp_path}", env={**ENV, "WANDB_API_KEY": secret})
    assert r.returncode == 0, r.stderr
    sbatch = r.stdout[r.stdout.index("# sbatch script NeMo-Run would submit"):]
    for line in ("#SBATCH --account=root", "#SBATCH --partition=batch", "#SBATCH --time=01:00:00",
                 "#SBATCH --job-name=nemotron-eval.server"):
        assert line in sbatch
    assert re.search(r"srun --output \S+/server/log-nemotron-eval\.server_%j_\S+ --chdir \S+ .*"
                     r"bash \S+/server/scripts/server.sh", sbatch)
    assert "python -m vllm.entrypoints.openai.api_server --model" in sbatch  # the job script, shown too
    assert secret not in r.stdout + r.stderr
    assert not squeue() and not any(tmp_path.iterdir())  # nothing submitted, nothing written


def _cli_until_benchmark_runs(tmp_path, *fake_args, sigint=signal.SIG_DFL):
    """The CLI on Slurm against the fake server, once gsm8k runs, and its run's record; `sigint`: its SIGINT
    disposition at start (SIG_IGN: a CLI in the background of a script, which Ctrl-C does not reach).

    The record is the one this run added to the index: the index outlives the session, and pytest numbers its
    folders anew once /tmp is cleared, so an earlier session's run can have had this very tmp_path (CI saw two)."""
    from nemotron.records import runs

    earlier = {p.stem for p in runs.index_dir().glob("*.json")}
    proc = subprocess.Popen([sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", "local", "--run",
                             "local-slurm", "-t", "gsm8k", *fake_overrides(tmp_path, *fake_args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ENV, "COLUMNS": "200"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    seen = []
    try:
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            seen.append(line)
            if "running gsm8k" in line or time.monotonic() > deadline:
                break
        assert any("running gsm8k" in s for s in seen), "".join(seen[-20:])
        threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True).start()  # never let the pipe fill
        (record,) = [r for p in runs.index_dir().glob("*.json") if p.stem not in earlier
                     and (r := runs.load(p.stem)) and r["run_dir"].startswith(str(tmp_path))]
    except BaseException:
        proc.kill()
        raise
    return proc, seen, record


def test_server_never_healthy_fails_within_startup_timeout(tmp_path):
    start = time.monotonic()
    r = nemotron("nano3", "eval", "-c", "local", "--run", "local-slurm", "-t", "gsm8k",
                 *fake_overrides(tmp_path, "--never-healthy"), "deployment.startup_timeout=8", env=ENV, timeout=300)
    elapsed = time.monotonic() - start
    assert r.returncode == 1
    err = r.stderr
    assert "not healthy after 8 s (deployment.startup_timeout; job" in err and "still loading weights" in err
    assert not squeue()
    job_id = re.search(r"job (\d+)\)", err).group(1)
    assert sacct_state(job_id) == "CANCELLED"
    assert elapsed < 90, f"took {elapsed:.0f} s"  # ~25 s of CLI/Prefect start-up + 8 s of waiting


def test_crash_hook_cancels_the_job_a_killed_flow_left_behind(tmp_path):
    """SIGKILL leaves the job running (its heartbeat timeout is 300 s); the flow's on_crashed /
    on_cancellation hook — which Prefect's runner calls after the process is gone — cancels it
    from the run's record."""
    from flows.eval import cancel_server_job
    from nemotron.records import runs

    proc, _, record = _cli_until_benchmark_runs(tmp_path, "--delay 600")
    try:
        (job,) = squeue()
        proc.kill()
        proc.wait()
        time.sleep(3)
        assert squeue() == [job], "nothing else should have cancelled the job"
        start = time.monotonic()
        cancel_server_job(None, SimpleNamespace(id=record["flow_run_id"]), None)
        while squeue() and time.monotonic() - start < 30:
            time.sleep(0.5)
        assert not squeue()
        (server,) = runs.servers(record)
        assert server["name"] == "server" and sacct_state(server["job_id"]) == "CANCELLED"
    finally:
        proc.kill()
        subprocess.run(["pkill", "-f", str(tmp_path)])  # the orphaned harness run


def test_cancel_through_the_prefect_api_cancels_the_slurm_job(tmp_path):
    """`prefect flow-run cancel` (what the UI's Cancel does) on an attached run: the flow stops like
    Ctrl-C, the job leaves squeue within 30 s, and the run ends Cancelled — also for a CLI started in
    the background of a script, where SIGINT is ignored."""
    from prefect import get_client

    proc, _, record = _cli_until_benchmark_runs(tmp_path, "--delay 600", sigint=signal.SIG_IGN)
    try:
        (job,) = squeue()
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "prefect", "flow-run", "cancel", record["flow_run_id"]],
                       check=True, capture_output=True, timeout=60)
        while squeue() and time.monotonic() - start < 30:
            time.sleep(0.5)
        assert not squeue(), f"job still queued {time.monotonic() - start:.0f} s after the cancel"
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert sacct_state(job.split()[0]) == "CANCELLED"
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(record["flow_run_id"]).state
    assert state.is_cancelled(), state


def test_a_detached_suite_longer_than_its_allocation_continues_in_a_new_one(tmp_path):
    """Issue 28: `--batch` with run.flow_time=00:02:00 on a suite that needs about three minutes (240 requests of
    0.75 s, one at a time, after the job's start-up: Slurm ends a job up to ~35 s past its limit, and 0.5 s a request
    once let the first allocation answer all 240). Slurm ends the
    flow job at its time limit; the allocation it queued when it started (afternotok) takes over, reuses what the
    first one answered (the response cache) and completes the suite. `eval status JOB` shows both allocations."""
    journal = tmp_path / "journal"
    env = {**ENV, "PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "prefect-home")}
    r = nemotron("nano3", "eval", "-c", "local", "--batch", "local-slurm-ssh", "-t", "gsm8k",
                 *fake_overrides(tmp_path, "--journal", str(journal), "--delay", "0.75"),
                 "evaluation.nemo_evaluator_config.config.params.limit_samples=240", "evaluation.in_flight=1",
                 "run.flow_time=00:02:00", env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "each allocation: 00:02:00 (run.flow_time)" in r.stdout, r.stdout
    job = re.search(r"submitted Slurm job (\d+)", r.stdout).group(1)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
        if not queued:
            break
        time.sleep(5)
    status = nemotron("nano3", "eval", "status", job, env=env)
    assert status.returncode == 0, status.stderr
    chain = re.search(r"^allocations: (.*)$", status.stdout, re.M)
    assert chain, status.stdout
    allocations = re.findall(r"(\d+) \((\w+)\)", chain.group(1))
    assert allocations[0] == (job, "TIMEOUT") and allocations[-1][1] == "COMPLETED", status.stdout
    assert len(allocations) >= 2
    assert ("gsm8k", "exact_match__strict-match") in scores(status.stdout), status.stdout
    # one server at most per allocation, and at least two: the first answered some, not all, and the suite completed.
    # Under load an allocation may end before its flow launches a server (the lanes run: 2 starts in 3 allocations)
    assert 2 <= journal.read_text().count("start") <= len(allocations), (journal.read_text()[:2000], status.stdout)
    (run_dir,) = {p.parent for p in tmp_path.glob("*/*/results.json")}
    assert json.loads((run_dir / "results.json").read_text())["results"][0]["status"] == "completed"
    answered_first = journal.read_text().split("start")[1].count("request")
    assert 0 < answered_first < 240  # the first allocation answered some, and not all


def test_eval_cancel_stops_a_run_and_its_server_job_as_the_uis_cancel_does(tmp_path):
    """Issue 28: `eval cancel RUN` (a prefix of the run's id) on an attached run: the run ends Cancelled, its Slurm job
    is cancelled, and the command says so once it is over. Cancelling it again says it has already ended."""
    proc, _, record = _cli_until_benchmark_runs(tmp_path, "--delay 600")
    try:
        (job,) = squeue()
        r = nemotron("nano3", "eval", "cancel", record["flow_run_id"][:8], env=ENV, timeout=150)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"({record['flow_run_id']}): Cancelled" in r.stdout, r.stdout
    assert not squeue() and sacct_state(job.split()[0]) == "CANCELLED"
    again = nemotron("nano3", "eval", "cancel", record["flow_run_id"], env=ENV)
    assert again.returncode == 1 and "has already ended (Cancelled): nothing to cancel" in again.stderr, again.stderr


def test_squash_runs_through_prefect_shell_with_its_output_in_the_flow_runs_logs(tmp_path, monkeypatch):
    """Issue 20: the container squash is a task of the flow run (`squash <image>`), run by prefect-shell's
    ShellOperation: salloc + srun on the real Slurm run a stand-in `enroot` (the real one is not
    installable here), whose output is read back from the Prefect API among the flow run's logs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId

    from flows.eval import nano3_eval

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "enroot").write_text('#!/bin/sh\necho "stand-in enroot on $(hostname): $*"\n: > "$3"\n')
    (bin_dir / "enroot").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    image = f"nvcr.io/nvidia/vllm:standin-{tmp_path.name}"
    state = nano3_eval(config="local", profile="local-slurm", tasks=["gsm8k"], force_squash=True, overrides=[
        f"deployment.image={image}", *fake_overrides(tmp_path)[1:]], return_state=True)
    run_id = state.state_details.flow_run_id
    line = re.compile(r"stand-in enroot on \S+: import --output (\S+\.sqsh) docker://nvcr\.io#nvidia/vllm:standin-")
    deadline = time.monotonic() + 30  # the API log handler sends in batches, after the run ended here
    with get_client(sync_client=True) as client:
        while True:
            logs = "\n".join(e.message for e in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200))
            if line.search(logs) or time.monotonic() > deadline:
                break
            time.sleep(1)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
    (squash,) = [t for t in tasks if "squash" in t.tags]
    assert squash.name == f"squash {image}" and squash.state.is_completed()
    sqsh = line.search(logs)
    assert sqsh, logs[-3000:]
    image_file = sqsh.group(1).replace(".partial.sqsh", ".sqsh")  # imported to a partial file, renamed once whole
    assert sqsh.group(1).endswith(".partial.sqsh") and os.path.isfile(image_file)
    assert not os.path.exists(sqsh.group(1))
    os.unlink(image_file)
    # no pyxis here: the server job cannot start its container, so the run fails after the squash
    assert state.is_failed() or state.is_crashed()


def test_a_job_held_in_the_queue_past_queue_timeout_fails_with_slurms_reason_and_is_cancelled(tmp_path):
    """Issue 15: a partition that is DOWN keeps the job PENDING; the run gives up after queue_timeout, naming
    Slurm's reason, and cancels the job."""
    subprocess.run(["scontrol", "update", "PartitionName=batch", "State=DOWN"], check=True)
    try:
        r = nemotron("nano3", "eval", "-c", "local", "--run", "local-slurm", "-t", "gsm8k",
                     *fake_overrides(tmp_path), "deployment.queue_timeout=6", env=ENV, timeout=300)
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=batch", "State=UP"], check=True)
    assert r.returncode == 1, r.stderr
    assert re.search(r"job (\d+) waited 6 s without starting \(PENDING, Slurm reason: PartitionDown; "
                     r"deployment.queue_timeout\)", r.stderr), r.stderr[-2000:]
    job_id = re.search(r"job (\d+) waited", r.stderr).group(1)
    assert not squeue()
    assert sacct_state(job_id) == "CANCELLED"


def _stop_login_node() -> None:
    """The login node goes away: its sshd and every session it serves (the tunnel breaks)."""
    pid = open("/run/sshd-login.pid").read().strip()
    subprocess.run(["pkill", "-KILL", "-P", pid])
    subprocess.run(["kill", "-KILL", pid])


def _suite_over_ssh_once_answered(tmp_path, journal, limit: int, in_flight: int) -> subprocess.Popen:
    """gsm8k over local-slurm-ssh against the fake server (0.3 s per answer, no relaunch allowed), once its journal
    shows 6 requests answered."""
    proc = subprocess.Popen([sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", "local", "--run",
                             "local-slurm-ssh", "-t", "gsm8k",
                             *fake_overrides(tmp_path, "--journal", str(journal), "--delay", "0.3"),
                             f"evaluation.nemo_evaluator_config.config.params.limit_samples={limit}",
                             f"evaluation.in_flight={in_flight}", "deployment.health_interval=1",
                             "deployment.max_restarts=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ENV, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 300
        while (not journal.exists() or journal.read_text().count("request") < 6) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
    except BaseException:
        proc.kill()
        raise
    return proc


def test_an_ssh_connection_dropped_mid_suite_is_reopened_and_the_server_not_relaunched(tmp_path):
    """Issue 28: the SSH connection to the login node drops mid-suite (every session sshd serves is killed; sshd
    itself stays, as after a network blip). The port forward opens a new connection for its next client, the
    requests it carried are sent again, and the server, untouched, serves the rest: no relaunch, one server start."""
    journal = tmp_path / "journal"
    proc = _suite_over_ssh_once_answered(tmp_path, journal, limit=30, in_flight=4)
    try:
        listener = open("/run/sshd-login.pid").read().strip()
        sessions = subprocess.run(["pgrep", "-P", listener], capture_output=True, text=True).stdout.split()
        assert sessions, "no SSH session to drop"
        subprocess.run(["kill", "-KILL", *sessions], check=True)
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert "relaunching" not in out and "died" not in out and "hung" not in out, out[-4000:]
    assert journal.read_text().count("start") == 1
    assert ("gsm8k", "exact_match__strict-match") in scores(out), out[-3000:]
    (run_dir,) = {p.parent for p in tmp_path.glob("*/*/results.json")}
    (launch,) = json.loads((run_dir / "in-flight.json").read_text())
    (replica,) = launch["replicas"]
    assert replica["alive"] and launch["benchmarks"]["gsm8k"]["failed"] == 0
    assert all(pid not in subprocess.run(["pgrep", "-P", listener], capture_output=True, text=True).stdout.split()
               for pid in sessions)  # the sessions it used after were new ones


def test_a_tunnel_broken_mid_wait_fails_within_state_timeout_and_the_job_stops_itself(tmp_path):
    """Issue 15: the login node goes away while the server starts. The state cannot be read: the run fails
    after state_timeout with the last error; the job, whose heartbeat stopped, leaves the queue by itself."""
    proc = subprocess.Popen([sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", "local", "--run",
                             "local-slurm-ssh", "-t", "gsm8k", *fake_overrides(tmp_path, "--never-healthy"),
                             "deployment.startup_timeout=600", "deployment.state_timeout=15",
                             "deployment.heartbeat_timeout=10"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **ENV, "COLUMNS": "200"})
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "[serve] server at" in line:
                break
        assert squeue(), "".join(seen[-20:])
        _stop_login_node()
        broken = time.monotonic()
        seen.extend(proc.stdout)
        proc.wait(timeout=120)
        failed_after = time.monotonic() - broken
    finally:
        proc.kill()
        subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "slurm.sh"), "start"], capture_output=True)
    out = "".join(seen)
    assert proc.returncode == 1, out[-3000:]
    assert "could not be read for 15 s (deployment.state_timeout)" in out, out[-3000:]
    assert failed_after < 15 + 60, failed_after  # the bound, plus the stop's grace and Prefect's exit
    deadline = time.monotonic() + 60
    while squeue() and time.monotonic() < deadline:
        time.sleep(1)
    assert not squeue(), "the job did not stop itself once its heartbeat stopped"


def test_a_requeued_server_job_starts_again_with_its_secrets_and_leaves_no_private_file(tmp_path, monkeypatch):
    """Issue 27: Slurm requeues a job after a preemption or a node failure (here `scontrol requeue`); its script
    runs again from the top and must find its secrets. The server here exits at once without its secret, so a
    second start that answers its health path had it. Once the job ends for good, the private file is gone."""
    from pathlib import Path

    from nemotron.config import profiles
    from nemotron.config.schema import load_config
    from nemotron.serving import endpoints, jobs

    monkeypatch.setenv("NEMOTRON_ENV_FILE", ENV["NEMOTRON_ENV_FILE"])
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # NeMo-Run's local tunnel (invoke) reads it
    journal = tmp_path / "journal"
    cfg = load_config("local", [*fake_overrides(tmp_path, "--journal", str(journal), "--require-env", "SERVER_TOKEN"),
                                "deployment.env.SERVER_TOKEN=requeue-secret-7f3e"])
    with jobs.serve(cfg.deployment, str(tmp_path), tmp_path / "run",
                       profile=profiles.load_profile("local-slurm")) as server:
        job, private = server.job, Path(server.job.secrets_file)
        assert private.is_file() and "requeue-secret-7f3e" not in Path(job.job_dir, "scripts", "server.sh").read_text()
        first = job.read("endpoint").strip()
        subprocess.run(["scontrol", "requeue", job.job_id], check=True)
        lift_requeue_hold(job.job_id)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # the same job, started again: a new endpoint that answers
            again = (job.read("endpoint") or "").strip()
            if journal.read_text().count("start") >= 2 and again and again != first and \
                    endpoints.healthy(f"{again}/health"):
                break
            time.sleep(2)
        else:
            shown = subprocess.run(["scontrol", "show", "job", job.job_id], capture_output=True, text=True).stdout
            raise AssertionError(f"the requeued job did not serve again: {journal.read_text()!r}, {shown}")
        assert private.is_file()  # kept: Slurm may requeue it again
    assert not private.exists(), "the private file outlived the job"


def lift_requeue_hold(job_id: str) -> None:
    """Slurm holds a requeued job back for two minutes (BeginTime) while the node cleans up its last run; start it
    as soon as that run's steps are gone (started before, it fails at once: seen here), not after the hold."""
    for _ in range(240):
        held = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True)
        steps = subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job_id}\."], capture_output=True, text=True)
        if held.stdout.split() == ["PENDING", "BeginTime"] and not steps.stdout.strip():
            time.sleep(1.0)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} was not held after its requeue, or its steps never ended: {held.stdout!r}")


def test_a_server_job_requeued_mid_suite_is_waited_for_not_relaunched(tmp_path):
    """Issue 28: Slurm requeues the server job mid-suite (a preemption, a node failure; here `scontrol requeue`).
    The same job runs its script again and serves on a new port: the flow waits for it (requests wait in the gate)
    and goes on there through a new port forward over SSH, without a relaunch counted against
    deployment.max_restarts; the suite completes."""
    journal = tmp_path / "journal"
    proc = _suite_over_ssh_once_answered(tmp_path, journal, limit=40, in_flight=2)
    try:
        (job,) = squeue()
        job_id = job.split()[0]
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        lift_requeue_hold(job_id)
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert f"[serve] job {job_id} was requeued by Slurm" in out, out[-4000:]
    assert f"serves again (job {job_id}, requeued: not a relaunch)" in out, out[-4000:]
    assert "relaunching" not in out and "died" not in out, out[-4000:]
    assert len(re.findall(r"\[serve\] server at http://\S+, reached as http://127\.0\.0\.1:\d+", out)) == 2, out[-4000:]
    assert journal.read_text().count("start") == 2
    got = scores(out)
    assert ("gsm8k", "exact_match__strict-match") in got, out[-3000:]
    (run_dir,) = {p.parent for p in tmp_path.glob("*/*/results.json")}
    gate_record = json.loads((run_dir / "in-flight.json").read_text())
    assert [x["launch"] for x in gate_record] == [1]  # one launch: the requeue was not a relaunch
    assert len({r["url"] for r in gate_record[0]["replicas"]}) == 2  # the same job, served at a new address
