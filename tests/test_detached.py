"""The detached job's script and env.toml (nemotron.serving.detached), without submitting: the real submission is
tests/test_topology.py."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from nemotron.config import profiles, secrets
from nemotron.config.request import EvalRequest
from nemotron.serving import detached
from tests.helpers import REPO, nemotron

pytestmark = pytest.mark.cluster  # detached runs on the project's Slurm, over its login node

ENV_FILE = REPO / "config" / "env.example.toml"


@pytest.fixture
def ssh_profile(monkeypatch):
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(ENV_FILE))
    return profiles.load_profile("local-slurm-ssh")


def test_the_job_script_holds_no_secret_and_runs_the_flow_with_the_profile_inside_the_cluster(ssh_profile,
                                                                                             monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-detached-0123456789")
    monkeypatch.setenv("HF_TOKEN", "hf_detachedToken42")
    hidden = secrets.hidden_overrides(["deployment.env.SERVICE_PASSWORD=pw-detached-literal", "run.model=/ckpt/a"])
    monkeypatch.setenv("NEMOTRON_SECRET_OVERRIDE_0", "pw-detached-literal")  # removed again after the test
    request = EvalRequest.checked(tasks=["gsm8k"], config="local", profile="local-slurm-ssh", overrides=hidden)
    script = detached.job_script(request, ssh_profile, "/cluster/envs/abc", "/cluster/.secrets/x.env", None, None)
    for value in ("wandb-detached-0123456789", "hf_detachedToken42", "pw-detached-literal"):
        assert value not in script
    unset, sourced = script.index("unset HF_TOKEN NEMOTRON_SECRET_OVERRIDE_0 WANDB_API_KEY\n"), \
        script.index(". /cluster/.secrets/x.env; set +a;")
    assert unset < sourced  # inherited values go, the job's own come from the private file
    assert "rm -f" not in script  # kept for a requeue: a job that waits for this one's end removes it
    assert script.splitlines()[-1] == (
        "exec python -m nemotron.cli nano3 eval -c local -t gsm8k --run local-slurm-ssh "
        "'deployment.env.SERVICE_PASSWORD=${oc.env:NEMOTRON_SECRET_OVERRIDE_0}' run.model=/ckpt/a")
    assert "cd /var/tmp/nemotron-login/jobs" in script  # a relative output_dir lands on the cluster's disk
    # the values travel in the private file instead
    text = detached.secrets_text(detached.secrets_for(request, ssh_profile, None))
    assert "WANDB_API_KEY=wandb-detached-0123456789\n" in text
    assert "NEMOTRON_SECRET_OVERRIDE_0=pw-detached-literal\n" in text

    # the env.toml it writes is this profile as seen inside the cluster: tunnel local, no login node
    toml = re.search(r"<<'(NEMOTRON_ENV_\w+)'\n(.*)\n\1\n", script, re.S).group(2)
    (tmp_path / "env.toml").write_text(toml)
    inside = profiles.load_profile("local-slurm-ssh", tmp_path / "env.toml")
    assert inside == ssh_profile.model_copy(update={"tunnel": "local", "host": None, "user": None, "identity": None})
    assert profiles.wandb_settings(tmp_path / "env.toml") == profiles.wandb_settings(ENV_FILE)


def test_batch_to_a_cluster_needs_a_slurm_profile_with_a_job_folder(tmp_path):
    """No Prefect deployment and a profile with no remote_job_dir: one line, exit 2, nothing submitted."""
    r = nemotron("nano3", "eval", "-c", "local", "--batch", "local-slurm", "-t", "gsm8k",
                 env={"NEMOTRON_ENV_FILE": str(ENV_FILE), "PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path)})
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: --batch local-slurm without a Prefect deployment runs the evaluation as a "
                               "Slurm job: the profile needs") and r.stderr.count("\n") == 1


def test_a_dry_run_of_batch_shows_the_detached_job_script_and_submits_nothing(tmp_path):
    r = nemotron("nano3", "eval", "-c", "local", "--dry-run", "--batch", "local-slurm-ssh", "-t", "gsm8k",
                 f"evaluation.output_dir={tmp_path}", env={"NEMOTRON_ENV_FILE": str(ENV_FILE),
                                                           "WANDB_API_KEY": "wandb-dryrun-0123456789"})
    assert r.returncode == 0, r.stderr
    script = r.stdout[r.stdout.index("# detached flow job script"):]
    assert "exec python -m nemotron.cli nano3 eval -c local -t gsm8k --run local-slurm-ssh" in script
    assert "wandb-dryrun-0123456789" not in r.stdout and not any(tmp_path.iterdir())



@pytest.mark.parametrize(("status", "code"), [(403, 2), (503, 1)])
def test_batch_against_a_prefect_api_that_answers_an_error_stops_and_submits_nothing(tmp_path, status, code):
    """Issue 27: an API that answers (a refused key, a server error) is not "no server": falling back to the
    cluster would ship this machine's secrets around the team's server. Exit 2 for a 4xx, 1 for a 5xx."""
    import http.server
    import threading

    seen = []

    class Refusing(http.server.BaseHTTPRequestHandler):
        def answer(self):
            seen.append(f"{self.command} {self.path}")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"detail": "refused"}')

        do_GET = do_POST = do_PATCH = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        r = nemotron("nano3", "eval", "-c", "local", "--batch", "local-slurm-ssh", "-t", "gsm8k",
                     f"evaluation.output_dir={tmp_path / 'out'}",
                     env={"NEMOTRON_ENV_FILE": str(ENV_FILE), "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path),
                          "PREFECT_CLIENT_MAX_RETRIES": "0", "WANDB_API_KEY": "wandb-refused-0123456789"})
    finally:
        server.shutdown()
    assert r.returncode == code, r.stdout + r.stderr
    reason = {403: "Forbidden", 503: "Service Unavailable"}[status]
    assert re.search(rf"^error: the Prefect API at {re.escape(api)} answered {status} {reason} to GET /api/\S+; "
                     r"nothing was submitted", r.stderr) and r.stderr.count("\n") == 1, r.stderr
    assert "submitted" not in r.stdout and "cluster" not in r.stdout and seen
    assert not (tmp_path / "out").exists()


def test_the_job_gets_the_secrets_it_needs_and_no_other_secret_of_this_machine(ssh_profile, monkeypatch, tmp_path):
    """Issue 27: every secret-named variable of the laptop (AWS, GitHub, ...) went to the cluster."""
    for name, value in {"WANDB_API_KEY": "wandb-need-0123", "HF_TOKEN": "hf_need_0123", "ENDPOINT_KEY": "ep-need-01",
                        "CFG_TOKEN": "cfg-need-0123", "AWS_SECRET_ACCESS_KEY": "aws-other-0123",
                        "GITHUB_PAT": "gh-other-0123", "OPENAI_KEY": "oa-other-0123"}.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "mine.yaml"
    config.write_text(f"extends: {REPO}/config/local.yaml\n"
                      "deployment:\n  env:\n    SERVER_TOKEN: ${oc.env:CFG_TOKEN}\n")
    profile = ssh_profile.model_copy(update={"env_vars": {"SITE_TOKEN": "site-need-0123", "OMP_NUM_THREADS": "4"}})
    request = EvalRequest.checked(tasks=["gsm8k"], config=str(config), profile="local-slurm-ssh", overrides=[])
    given = detached.secrets_for(request, profile, "ENDPOINT_KEY")
    assert given == {"HF_TOKEN": "hf_need_0123", "CFG_TOKEN": "cfg-need-0123", "ENDPOINT_KEY": "ep-need-01",
                     "WANDB_API_KEY": "wandb-need-0123", "SITE_TOKEN": "site-need-0123"}


def test_a_profiles_secret_env_vars_are_named_in_the_job_and_read_from_its_private_file(ssh_profile, tmp_path):
    """Issue 27: NeMo-Run writes env_vars as `export K=V` into the sbatch script; the detached job wrote the
    whole profile into its own. Secret ones now travel by name; the others are quoted for the shell."""
    profile = ssh_profile.model_copy(update={"env_vars": {"SITE_TOKEN": "site-secret-0123", "NOTE": "a b;c"}})
    assert profile.job_env() == {"NOTE": "'a b;c'"} and profile.secret_env() == {"SITE_TOKEN": "site-secret-0123"}
    request = EvalRequest.checked(tasks=["gsm8k"], config="local", profile="local-slurm-ssh", overrides=[])
    script = detached.job_script(request, profile, "/cluster/envs/abc", "/cluster/.secrets/x.env", None, None)
    assert "site-secret-0123" not in script
    toml = re.search(r"<<'(NEMOTRON_ENV_\w+)'\n(.*)\n\1\n", script, re.S).group(2)
    (tmp_path / "env.toml").write_text(toml)
    with pytest.raises(profiles.ConfigError, match=r"env_vars.SITE_TOKEN of profile 'local-slurm-ssh' = "
                                                   r"'\$\{SITE_TOKEN\}' names a variable that is not set here"):
        profiles.load_profile("local-slurm-ssh", tmp_path / "env.toml")
    import os
    os.environ["SITE_TOKEN"] = "site-secret-0123"  # what the job's private file gives it
    try:
        inside = profiles.load_profile("local-slurm-ssh", tmp_path / "env.toml")
    finally:
        del os.environ["SITE_TOKEN"]
    assert inside.env_vars == {"SITE_TOKEN": "site-secret-0123", "NOTE": "a b;c"}


def test_the_cleanup_job_waits_for_the_flow_jobs_end_and_removes_its_private_files(ssh_profile):
    command = detached.cleanup_command(ssh_profile, "1234", ["/c/.secrets/a.env", "/c/.secrets/b.yaml"])
    assert command.startswith("sbatch --parsable --dependency=afterany:1234 --job-name=nemotron-eval.cleanup ")
    assert command.endswith("--wrap 'rm -f /c/.secrets/a.env /c/.secrets/b.yaml'")



def _run_continuation(tmp_path, flow_seconds=120, max_seconds=3600, queued=""):
    """`continuation()`'s lines under bash with stand-ins for sbatch (prints job 777, records its arguments) and
    squeue (lists `queued`)."""
    bin_dir, job_dir = tmp_path / "bin", tmp_path / "exp" / "flow"
    bin_dir.mkdir(exist_ok=True)
    job_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/sbatch.args\necho "777;cluster"\n')
    (bin_dir / "squeue").write_text(f'#!/bin/sh\n[ -n "{queued}" ] && case "$*" in *{queued or "none"}*) '
                                    f'echo "{queued} PENDING";; esac\nexit 0\n')
    for tool in ("sbatch", "squeue"):
        (bin_dir / tool).chmod(0o755)
    script = "\n".join(['JOB_DIR="$1"', *detached.continuation(flow_seconds, max_seconds), 'echo "went on"'])
    r = subprocess.run(["bash", "-c", script, "bash", str(job_dir)], capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "100"})
    args = (tmp_path / "sbatch.args").read_text() if (tmp_path / "sbatch.args").exists() else ""
    return r, job_dir, args


def test_each_allocation_queues_the_next_one_that_starts_only_if_it_fails(tmp_path):
    """Issue 28: the flow job's first lines note the allocation and queue the next (afternotok, dropped by Slurm
    when this one completes, the same sbatch script); not when the evaluation has ended, was cancelled, would go
    past run.max_walltime, or (a requeue of this job) its next one is queued already."""
    r, job_dir, args = _run_continuation(tmp_path)
    assert r.returncode == 0 and r.stdout.endswith("went on\n"), r.stderr
    assert (job_dir / "allocations").read_text() == "100\n" and (job_dir / "next").read_text() == "777\n"
    assert args.split() == ["--parsable", "--requeue", "--kill-on-invalid-dep=yes", "--dependency=afternotok:100",
                            f"{job_dir}/../flow_sbatch.sh"]
    assert (job_dir / "began").read_text().strip().isdigit()

    r, _, again = _run_continuation(tmp_path, queued="777")  # Slurm requeued this job: 777 waits already
    assert r.stdout.endswith("went on\n") and again == args

    (tmp_path / "sbatch.args").unlink()
    (job_dir / "next").unlink()
    r, _, args = _run_continuation(tmp_path, flow_seconds=7200, max_seconds=3600)
    assert args == "" and "no further allocation: run.max_walltime would be exceeded" in r.stderr
    assert r.stdout.endswith("went on\n")  # this allocation still runs

    (job_dir / "finished").write_text("0\n")
    r, _, args = _run_continuation(tmp_path)
    assert r.returncode == 0 and "went on" not in r.stdout and args == ""
    assert "ended in an earlier allocation" in r.stdout


def test_the_cleanup_job_follows_the_allocations_and_removes_the_files_once_the_suite_has_ended(ssh_profile,
                                                                                                 tmp_path):
    """With the job's folder, the cleanup job removes the private files only once no allocation is queued to go on
    (or the suite has finished); while one is, it submits itself again to wait for that one's end."""
    _run_continuation(tmp_path)  # the stand-ins, and a job folder whose next allocation is 777
    job_dir, secret = tmp_path / "exp" / "flow", tmp_path / "a.env"
    secret.write_text("X=1\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    (tmp_path / "sbatch.args").unlink()
    command = detached.cleanup_command(ssh_profile, "100", [str(secret)], str(job_dir))
    subprocess.run(["bash", "-c", command], check=True, env=env)
    assert "--dependency=afterany:100" in (tmp_path / "sbatch.args").read_text()
    assert (tmp_path / "sbatch.args").read_text().split()[-1] == f"{job_dir}/cleanup.sh"

    (tmp_path / "bin" / "squeue").write_text('#!/bin/sh\necho "777 PENDING"\n')
    (tmp_path / "sbatch.args").unlink()
    subprocess.run(["bash", str(job_dir / "cleanup.sh")], check=True, env=env)
    assert secret.exists() and "--dependency=afterany:777" in (tmp_path / "sbatch.args").read_text()

    (job_dir / "finished").write_text("0\n")  # the suite ended: the files go, whatever is queued
    subprocess.run(["bash", str(job_dir / "cleanup.sh")], check=True, env=env)
    assert not secret.exists()


def test_a_cancelled_job_does_not_go_on_in_a_new_allocation(tmp_path):
    """`eval cancel JOB` marks the job folder `cancelled` before its scancel: an allocation that starts after it (Slurm
    counts a cancelled job as failed, so its continuation is released) does nothing and queues nothing."""
    _run_continuation(tmp_path)
    (tmp_path / "sbatch.args").unlink()
    (tmp_path / "exp" / "flow" / "cancelled").touch()
    r, _, args = _run_continuation(tmp_path)
    assert r.returncode == 0 and "went on" not in r.stdout and args == ""


def test_a_flow_jobs_time_is_its_partitions_maximum_at_most_a_day():
    """run.flow_time unset: `sinfo`'s limit of the batch partition when under a day, else a day (also for
    "infinite" or nothing readable)."""
    from types import SimpleNamespace

    from nemotron.serving import cluster

    profile = SimpleNamespace(partition_for=lambda detached: "batch")
    for limit, expected in (("4:00:00", "4:00:00"), ("2-00:00:00", "1-00:00:00"), ("infinite", "1-00:00:00"),
                            ("", "1-00:00:00")):
        asked: list[str] = []
        target = SimpleNamespace(sh=lambda command, check=True, limit=limit, asked=asked:
                                 asked.append(command) or f"{limit}\n")
        assert cluster.flow_time(target, profile) == expected
        assert "sinfo -h -o %l -p batch" in asked[0]
