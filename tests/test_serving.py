import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from nemotron.config.schema import load_config
from nemotron.errors import ServeError
from nemotron.serving import endpoints, jobs
from tests.helpers import nemotron


def test_gpu_command_from_default_config():
    spec = jobs.server_spec(load_config("default").deployment, "/ckpt/rl")
    assert spec.command == ('vllm serve --model /ckpt/rl --served-model-name nano3 --host 0.0.0.0 '
                            '--tensor-parallel-size 4 --data-parallel-size 1 --port "$PORT" --max-model-len 32768')
    assert spec.port == 0 and "VIRTUAL_ENV" not in spec.env


def test_cpu_command_from_local_config_uses_the_serving_venv():
    spec = jobs.server_spec(load_config("local").deployment, "/m")
    assert spec.command.startswith("python -m vllm.entrypoints.openai.api_server --model /m")
    assert "--dtype float32" in spec.command
    assert spec.env["VIRTUAL_ENV"].endswith("serve-venv") and spec.env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert "VIRTUAL_ENV" not in jobs.server_spec(load_config("local").deployment, "/m", container=True).env


def run_script(tmp_path: Path, spec: jobs.ServerSpec, script: str | None = None) -> subprocess.Popen:
    """Run the job script the way NeMo-Run does: `bash <job_dir>/scripts/server.sh`."""
    (tmp_path / "scripts").mkdir(exist_ok=True)
    path = tmp_path / "scripts" / "server.sh"
    path.write_text(script or jobs.job_script(spec))
    return subprocess.Popen(["bash", str(path)], start_new_session=True)


def wait_for(path: Path, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


def test_ports_we_listen_on_are_never_ones_the_kernel_gives_outgoing_connections(monkeypatch):
    """A port from the ephemeral range can be taken by a client's connection between the probe and the server's
    bind (CI saw vLLM die with "Address already in use"): both pickers stay below it, and skip a held port."""
    low, _ = map(int, open(endpoints.EPHEMERAL_RANGE).read().split())
    ports = endpoints.listen_ports()
    assert ports.start >= 10000 and ports.stop <= low
    picked = {endpoints.free_port() for _ in range(50)}
    assert picked <= set(ports) and len(picked) > 40  # spread out: two runs rarely pick the same
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken := endpoints.free_port()))
        free = endpoints.free_port()
        monkeypatch.setattr(endpoints, "listen_ports", lambda: [taken, free])
        assert {endpoints.free_port() for _ in range(10)} == {free}
    in_job = {int(subprocess.run(["bash", "-c", jobs.PICK_PORT + '; echo "$PORT"'], capture_output=True,
                                 text=True, check=True).stdout) for _ in range(20)}
    assert in_job <= set(ports) and len(in_job) > 15


def test_job_script_reports_its_endpoint_and_stops_without_heartbeat(tmp_path):
    """The real script with a stand-in server: it picks a port, writes `endpoint` in its job dir,
    and stops the server once the submitter's heartbeat has been silent for heartbeat_timeout."""
    spec = jobs.ServerSpec("sleep 300", {}, "0.0.0.0", 0, "m", 60, heartbeat_timeout=4)
    job = run_script(tmp_path, spec)
    try:
        endpoint = wait_for(tmp_path / "endpoint")
        host, port = endpoint.removeprefix("http://").rsplit(":", 1)
        assert host == os.uname().nodename and int(port) in endpoints.listen_ports()  # never an ephemeral port
        server_pid = int(wait_for(tmp_path / "server.pid"))
        for beat in range(4):  # beating keeps it alive past the timeout
            (tmp_path / "heartbeat").write_text(str(beat))
            time.sleep(2)
        assert job.poll() is None and jobs._pid_alive(server_pid)
        job.wait(timeout=15)  # silence: the script stops the server and exits
        assert job.returncode == 143 and not jobs._pid_alive(server_pid)
        assert "no heartbeat from the submitter for 4 s" in (tmp_path / "server.log").read_text()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, 9)


class FakeJob:
    """Stands in for a submitted job: a scripted sequence of states and a log."""

    def __init__(self, tmp_path, states, endpoint=None, log="loading\n", **timeouts):
        self.states, self.endpoint, self.log = list(states), endpoint, log
        self.job_id, self.job_dir, self.running = "42", str(tmp_path), False
        self.last_error = "SSHException: No existing session"
        self.spec = jobs.ServerSpec("vllm serve x", {}, "0.0.0.0", 0, "m", startup_timeout=3, **timeouts)

    def state(self):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        self.running |= state == "RUNNING"
        return state

    def read(self, name):  # the job writes its endpoint once it runs
        return self.endpoint if name == "endpoint" and self.running else None

    def tail(self, lines=25):
        return self.log

    def reason(self):
        return "Resources" if not self.running else ""


def test_job_that_ends_before_healthy_fails_fast_with_its_log_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "STATE_POLL_SECONDS", 0.1)
    job = FakeJob(tmp_path, ["PENDING", "RUNNING", "FAILED"], log="RuntimeError: CUDA out of memory\n")
    with pytest.raises(ServeError) as e:
        jobs.wait_ready(job, print)
    assert "job 42 ended (FAILED) before it became healthy" in str(e.value)
    assert "CUDA out of memory" in str(e.value) and "vllm serve x" in str(e.value)


def test_queue_time_does_not_count_but_startup_does(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "STATE_POLL_SECONDS", 0.5)
    job = FakeJob(tmp_path, ["PENDING"] * 10 + ["RUNNING"], endpoint=f"http://127.0.0.1:{endpoints.free_port()}",
                  log="still loading weights\n")
    start = time.monotonic()
    with pytest.raises(ServeError, match=r"(?s)not healthy after 3 s.*still loading weights"):
        jobs.wait_ready(job, print)
    assert 3 + 4.5 <= time.monotonic() - start < 15  # 10 pending polls, then the 3 s startup budget


def test_a_job_that_never_leaves_the_queue_fails_the_run_naming_the_bound(tmp_path, monkeypatch):
    """Issue 15: a server job PENDING for ever (no such partition, no allocation) must not hold the flow for ever."""
    monkeypatch.setattr(jobs, "STATE_POLL_SECONDS", 0.1)
    job = FakeJob(tmp_path, ["PENDING"], queue_timeout=1)
    start = time.monotonic()
    with pytest.raises(ServeError, match=r"job 42 waited 1 s without starting \(PENDING, Slurm reason: Resources; "
                                         r"deployment.queue_timeout\)"):
        jobs.wait_ready(job, print)
    assert time.monotonic() - start < 5


def test_a_queued_job_says_why_it_waits_and_waits_unbounded_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "STATE_POLL_SECONDS", 0.05)
    monkeypatch.setattr(jobs, "QUEUE_REPORT_SECONDS", 0.3)
    assert jobs.ServerSpec("x", {}, "h", 0, "m", 1).queue_timeout is None
    job = FakeJob(tmp_path, ["PENDING"] * 30 + ["FAILED"])
    said = []
    with pytest.raises(ServeError, match="ended \\(FAILED\\)"):
        jobs.wait_ready(job, said.append)
    reports = [s for s in said if "still PENDING" in s]
    assert len(reports) >= 2 and all(s.endswith("(Slurm reason: Resources)") for s in reports), said


def test_a_state_that_cannot_be_read_fails_the_run_after_its_bound(tmp_path, monkeypatch):
    """Issue 15: a broken tunnel (or sacct down) made every state UNKNOWN, and the flow waited for ever."""
    monkeypatch.setattr(jobs, "STATE_POLL_SECONDS", 0.1)
    job = FakeJob(tmp_path, ["PENDING", "UNKNOWN"], state_timeout=1, queue_timeout=None)
    with pytest.raises(ServeError, match=r"could not be read for 1 s \(deployment.state_timeout\): SSHException"):
        jobs.wait_ready(job, print)
    back = FakeJob(tmp_path, ["UNKNOWN"] * 5 + ["PENDING"] * 30 + ["FAILED"], state_timeout=1)  # a blip is not fatal
    with pytest.raises(ServeError, match="ended \\(FAILED\\)"):
        jobs.wait_ready(back, print)


def test_server_logs_are_one_per_launch_in_order(tmp_path):
    assert jobs.server_logs(tmp_path) == []
    for name in ("server.log", "server-2.log", "server-3.log", "server-5.log"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in jobs.server_logs(tmp_path)] == ["server.log", "server-2.log", "server-3.log"]


def test_the_job_script_holds_no_secret_and_the_server_no_inherited_one(tmp_path, monkeypatch):
    """Issue 14: secret entries of deployment.env reach the server through a private file the job deletes,
    the submitter's own secrets (W&B, cloud keys) are unset, and the script names no value."""
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-value-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value-22")
    cfg = load_config("local", ["deployment.env.SERVER_TOKEN=server-secret-333", "deployment.env.PLAIN=plain-v"])
    spec = jobs.server_spec(cfg.deployment, "/ckpt")
    private = tmp_path / "private.env"
    private.write_text("SERVER_TOKEN=server-secret-333\n")
    script = jobs.job_script(spec, str(private))
    assert "server-secret-333" not in script and "wandb-secret-value-1" not in script
    assert {"AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"} <= set(spec.unset) and "SERVER_TOKEN" not in spec.unset
    assert f"unset {' '.join(spec.unset)}" in script and "export PLAIN=plain-v" in script
    probe = jobs.ServerSpec("env > \"$JOB_DIR/server-env\"; sleep 1", spec.env, "127.0.0.1", 0, "m", 60,
                               secret_env=spec.secret_env, unset=spec.unset)
    for _ in range(2):  # the second: Slurm runs a requeued job's script again, which must find its secrets
        (tmp_path / "server-env").unlink(missing_ok=True)
        job = run_script(tmp_path, probe, script=jobs.job_script(probe, str(private)))
        job.wait(timeout=30)
        env = (tmp_path / "server-env").read_text()
        assert "SERVER_TOKEN=server-secret-333" in env and "PLAIN=plain-v" in env
        assert "wandb-secret-value-1" not in env and "aws-secret-value-22" not in env
    assert private.exists()  # the submitter removes it once the job has ended for good

    # a job whose submitter is gone stops itself, for good: it removes the file
    orphan = jobs.ServerSpec("sleep 60", spec.env, "127.0.0.1", 0, "m", 60, heartbeat_timeout=1,
                                secret_env=spec.secret_env, unset=spec.unset)
    job = run_script(tmp_path, orphan, script=jobs.job_script(orphan, str(private)))
    job.wait(timeout=30)
    assert not private.exists()


def test_a_profiles_env_vars_reach_the_sbatch_script_quoted_and_its_secrets_do_not(tmp_path):
    """Issue 27: NeMo-Run writes env_vars as `export K=V`, unquoted, into the sbatch script on the cluster's
    disk, and the dry run masked the values, so the preview hid what went to disk. A secret may come from a
    variable (`"${NAME}"`) instead of being written into env.toml."""
    from nemotron.config import profiles

    (tmp_path / "env.toml").write_text(
        '[site]\nexecutor = "slurm"\naccount = "root"\npartition = "batch"\ntunnel = "local"\n'
        'env_vars = { SITE_TOKEN = "${SITE_SECRET}", NOTE = "a b;c" }\n')
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", "--run", "site", f"evaluation.output_dir={tmp_path}",
                 env={"NEMOTRON_ENV_FILE": str(tmp_path / "env.toml"), "SITE_SECRET": "site-secret-0456"})
    assert r.returncode == 0, r.stderr
    sbatch = r.stdout[r.stdout.index("# sbatch script NeMo-Run would submit"):]
    assert "export NOTE='a b;c'" in sbatch
    assert "site-secret-0456" not in r.stdout + r.stderr and "SITE_TOKEN" not in sbatch
    missing = nemotron("nano3", "eval", "-c", "local", "--dry-run", "--run", "site",
                       env={"NEMOTRON_ENV_FILE": str(tmp_path / "env.toml")})
    assert missing.returncode == 2 and missing.stderr == (
        "error: env_vars.SITE_TOKEN of profile 'site' = '${SITE_SECRET}' names a variable that is not set here; "
        "set SITE_SECRET or write the value\n"), missing.stderr
    secret = profiles.Profile(name="p", env_vars={"SITE_TOKEN": "site-secret-0456", "NOTE": "x"})
    spec = jobs.server_spec(load_config("local").deployment, "/ckpt", profile=secret)
    assert spec.secret_env == {"SITE_TOKEN": "site-secret-0456"} and "SITE_TOKEN" not in spec.env
