"""The cluster topologies of DESIGN.md on this machine, with the submitting side blind to the cluster's disk.

The CLI runs in a private mount namespace (`unshare -m`) with empty tmpfs over the login node's job folder and
over the checkpoint's folder, as a laptop would see them (not at all); Slurm and the sshd login node of
scripts/slurm/slurm.sh see the real ones. The server is the real vLLM (CPU) serving the built-in model, copied
to the "cluster's" checkpoint folder.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter

from nemotron.serving import runtime
from tests.helpers import REPO, hf_home, sacct_state, scores, squeue
from tests.sentinels import Sentinels, watch_harnesses

pytestmark = pytest.mark.cluster  # the login node and the Slurm queue, from a namespace that cannot see their disk

PROFILES = {"NEMOTRON_ENV_FILE": str(REPO / "config" / "env.example.toml")}
LOGIN_JOBS = "/var/tmp/nemotron-login/jobs"  # local-slurm-ssh's remote_job_dir
CHECKPOINTS = "/var/tmp/nemotron-ckpt"  # the cluster's checkpoint folder


def hidden(*argv: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`argv` on a "laptop": the cluster's folders are empty tmpfs in its private mount namespace."""
    for folder in (LOGIN_JOBS, CHECKPOINTS):
        os.makedirs(folder, exist_ok=True)
    mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(f)}" for f in (LOGIN_JOBS, CHECKPOINTS))
    check = f"test -z \"$(find {CHECKPOINTS} {LOGIN_JOBS} -mindepth 1)\""  # nothing of the cluster's disk is seen
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c",
                           f'{mounts} && {check} && exec "$@"', "laptop", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **PROFILES, "COLUMNS": "200", **(env or {})})


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return hidden(sys.executable, "-m", "nemotron.cli", "nano3", "eval", *args, **kwargs)


@pytest.fixture
def checkpoint():
    """The built-in model as a checkpoint on the cluster's disk (hard links: no copy of the weights)."""
    from nemotron.serving import runtime

    folder = Path(CHECKPOINTS) / uuid.uuid4().hex[:8]
    folder.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(runtime.builtin_model_dir("smollm2-135m-instruct")), str(folder / "smol")],
                   check=True)
    yield folder / "smol"
    shutil.rmtree(folder, ignore_errors=True)


def limited(tmp_path, model: Path) -> list[str]:
    return [f"run.model={model}", "evaluation.nemo_evaluator_config.config.params.limit_samples=1",
            f"evaluation.output_dir={tmp_path}", f"evaluation.hf_home={hf_home()}"]


def test_the_identity_of_a_cluster_checkpoint_is_measured_on_the_cluster(checkpoint):
    """Through the login node: (newest mtime, total size) of the whole tree; a file deep inside changes it."""
    probe = ("import json, sys; from nemotron.config import profiles; from nemotron.serving import cluster; "
             "print(json.dumps(cluster.remote_checkpoint(profiles.load_profile('local-slurm-ssh'), sys.argv[1], "
             "sys.argv[1], print)))")

    def measured() -> tuple[list[int], str]:
        r = hidden(sys.executable, "-c", probe, str(checkpoint))
        assert r.returncode == 0, r.stderr
        import json

        tree, tokenizer = json.loads(r.stdout.splitlines()[-1])
        return tree, tokenizer

    tree, tokenizer = measured()
    total = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    assert tree[1] == total > 269_000_000  # the weights counted, though this side cannot see them
    assert sorted(os.listdir(tokenizer)) == [".complete", "chat_template.jinja", "config.json",
                                             "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    (checkpoint / "iter_0000002" / "shards").mkdir(parents=True)
    (checkpoint / "iter_0000002" / "shards" / "part-0.bin").write_bytes(b"\0" * 10)
    again, tokenizer_again = measured()
    assert again[1] == total + 10 and again != tree and tokenizer_again != tokenizer


def test_attached_over_ssh_reads_nothing_of_the_clusters_disk(tmp_path, checkpoint):
    """`--run local-slurm-ssh` from the laptop: hellaswag (log-likelihood: the tokenizer) and gsm8k both score;
    the tokenizer comes through the tunnel. A file written deep in the checkpoint makes it a new model: the next
    run evaluates it again instead of reusing the first run's result.
    Issue 27: the laptop's secrets (tests/sentinels.py), a secret of the profile's env_vars and of deployment.env
    reach no file on either side, no harness, not the Prefect database."""
    import time

    started, sentinels = time.time() - 1, Sentinels("attached")
    with watch_harnesses(sentinels.values()) as harnesses:
        r = cli("-c", "local", "--run", "local-slurm-ssh", "-t", "hellaswag", "-t", "gsm8k",
                *limited(tmp_path, checkpoint), sentinels.deployment_env_override(), env=sentinels.env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert [v for v in sentinels.values() if v in out] == []
    assert sentinels.found_in(tmp_path) == [] and sentinels.found_in(LOGIN_JOBS, runtime.home(), since=started) == []
    assert sentinels.found_in_prefect() == []
    assert len(harnesses.seen) >= 2 and harnesses.found == [], harnesses.found
    got = scores(out)
    assert {("hellaswag", "acc"), ("gsm8k", "exact_match__strict-match")} <= set(got), out[-2000:]
    assert f"copied the tokenizer of {checkpoint}" in out
    assert "Secsh channel" not in out and "open FAILED" not in out  # the forward's probes while vLLM loads
    first = {p.name for p in (tmp_path / "benchmarks").iterdir()}

    (checkpoint / "iter_0000002").mkdir()
    (checkpoint / "iter_0000002" / "note.txt").write_text("trained further")
    r = cli("-c", "local", "--run", "local-slurm-ssh", "-t", "gsm8k", *limited(tmp_path, checkpoint))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "reusing its result" not in out and "nothing to serve" not in out
    (new,) = {p.name for p in (tmp_path / "benchmarks").iterdir()} - first
    assert new.startswith("gsm8k-") and ("gsm8k", "exact_match__strict-match") in scores(out)
    assert not squeue()


def no_prefect(tmp_path) -> dict[str, str]:
    """The laptop has no Prefect server: no API URL, a Prefect home with no profile setting one."""
    return {"PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "prefect-home")}


def wait_until_the_queue_is_empty(timeout: float = 900) -> None:
    import time

    deadline = time.monotonic() + timeout
    while squeue() and time.monotonic() < deadline:
        time.sleep(3)
    assert not squeue(), squeue()


def test_batch_without_prefect_runs_the_whole_evaluation_in_the_cluster(tmp_path, checkpoint):
    """`--batch local-slurm-ssh` with no Prefect server, from the laptop: it returns within seconds with a Slurm job
    id; the flow runs in the cluster (its own vLLM job, the harnesses next to the checkpoint, results on the
    cluster's disk); `eval status JOB` reads the scores through the tunnel. A second submission of the same
    evaluation reuses the environment and the results: no server is started."""
    import time

    args = ["-c", "local", "--batch", "local-slurm-ssh", "-t", "hellaswag", "-t", "gsm8k",
            *limited(checkpoint.parent / "results", checkpoint)]
    private = Path(LOGIN_JOBS) / ".secrets"
    earlier = set(private.iterdir()) if private.is_dir() else set()
    start = time.monotonic()
    # issue 27: the job gets the secrets it needs (W&B, the hub, the profile's), not the laptop's others; none of
    # them reaches a file, a harness or the Prefect database
    started, sentinels = time.time() - 1, Sentinels("batch")
    with watch_harnesses(sentinels.values()) as harnesses:
        r = cli(*args, env={**no_prefect(tmp_path), **sentinels.env})
        submitted_in = time.monotonic() - start
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        assert submitted_in < 30, submitted_in
        assert r.stdout.startswith("no Prefect server is configured (PREFECT_API_URL is unset): the evaluation goes "
                                   "to the cluster itself"), r.stdout
        assert "secrets it gets, through a private file: HF_TOKEN, SITE_TOKEN, WANDB_API_KEY\n" in r.stdout, r.stdout
        job = re.search(r"submitted Slurm job (\d+) on local-slurm-ssh", r.stdout).group(1)
        assert f"results: under {checkpoint.parent}/results on the cluster" in r.stdout
        (given,) = set(private.iterdir()) - earlier  # while the job may run (again), its private file is there
        assert {sentinels.env["HF_TOKEN"], sentinels.profile_secret} <= set(re.findall(r"=(\S+)", given.read_text()))
        assert sentinels.env["GITHUB_PAT"] not in given.read_text() and sentinels.netrc not in given.read_text()
        wait_until_the_queue_is_empty()  # the flow job, its server job, and the job that removes the private file
    assert not given.exists(), "the private file outlived the job"
    assert [v for v in sentinels.values() if v in r.stdout + r.stderr] == []
    assert sentinels.found_in(LOGIN_JOBS, checkpoint.parent, runtime.home(), since=started) == []
    assert sentinels.found_in_prefect() == []
    assert len(harnesses.seen) >= 2 and harnesses.found == [], harnesses.found

    status = cli("status", job, env=no_prefect(tmp_path))
    assert status.returncode == 0, status.stderr
    assert f"job {job} on local-slurm-ssh (Slurm): COMPLETED" in status.stdout, status.stdout
    assert re.search(r"server job: \d+ \(CANCELLED\)", status.stdout), status.stdout
    got = scores(status.stdout)
    assert {("hellaswag", "acc"), ("hellaswag", "acc_norm"), ("gsm8k", "exact_match__strict-match")} <= set(got)
    run_dir = re.search(r"^results: (\S+) \(cluster\)", status.stdout, re.M).group(1)
    assert run_dir.startswith(f"{checkpoint.parent}/results/") and Path(run_dir, "results.json").is_file()

    # again, now with a Prefect server that has no nano3-eval deployment (the test session's): the job reports there
    api = os.environ["PREFECT_API_URL"]
    again = cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.startswith(f"no deployment nano3-eval/nano3-eval with its work pool on {api}: the evaluation "
                                   "goes to the cluster itself"), again.stdout
    assert re.search(r"environment: \S+ \(reused\)", again.stdout) and f"reports to the Prefect API at {api}" in \
        again.stdout, again.stdout
    second = re.search(r"submitted Slurm job (\d+)", again.stdout).group(1)
    wait_until_the_queue_is_empty()
    logs = cli("logs", second)
    assert logs.returncode == 0, logs.stderr
    assert f"job {second} on local-slurm-ssh (Slurm): COMPLETED" in logs.stdout
    assert "nothing to serve" in logs.stdout and "[serve] submitting" not in logs.stdout, logs.stdout[-3000:]
    assert scores(logs.stdout) == got  # the same results, reused

    # issue 28: `eval cancel JOB` of a detached run whose server job runs: both jobs cancelled
    third = cli("-c", "local", "--batch", "local-slurm-ssh", "-t", "arc_challenge",
                *limited(checkpoint.parent / "results", checkpoint))
    assert third.returncode == 0, third.stderr[-2000:]
    flow_job = re.search(r"submitted Slurm job (\d+)", third.stdout).group(1)
    deadline = time.monotonic() + 300
    while not (servers := [job_id for job_id, name, _ in map(str.split, squeue()) if name.endswith(".server")]) \
            and time.monotonic() < deadline:
        time.sleep(1)
    (server_job,) = servers
    cancelled = cli("cancel", flow_job)
    assert cancelled.returncode == 0, cancelled.stderr[-2000:]
    assert f"job {flow_job} on local-slurm-ssh (Slurm): cancelled" in cancelled.stdout, cancelled.stdout
    assert f"server job {server_job}: cancelled" in cancelled.stdout, cancelled.stdout
    (later,) = re.findall(r"^allocation (\d+): cancelled", cancelled.stdout, re.M)  # its queued continuation too
    wait_until_the_queue_is_empty(120)
    assert sacct_state(flow_job) == sacct_state(server_job) == sacct_state(later) == "CANCELLED"
    flow_run = re.search(r"^flow run: \S+ \(([0-9a-f-]{36})\)", logs.stdout, re.M).group(1)
    with get_client(sync_client=True) as client:  # in the Prefect UI as any run: state, tags, reused tasks
        run = client.read_flow_run(UUID(flow_run))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]}))
    assert run.state.is_completed() and f"model:{checkpoint}" in run.tags
    assert sorted((t.name, t.state.name) for t in tasks if "reused" in t.tags) == [("gsm8k", "Completed"),
                                                                                  ("hellaswag", "Completed")]


@pytest.fixture(autouse=True)
def no_deployment():
    """--batch goes to the cluster when the Prefect server has no nano3-eval deployment: make sure this one has none."""
    with get_client(sync_client=True) as client:
        for d in client.read_deployments():
            if d.name == "nano3-eval":
                client.delete_deployment(d.id)
