"""The deployment on real parts: the session's Prefect server, `prefect deploy --all` from the
repository, a process worker, and the evaluation run by that worker on the real model."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter

from nemotron.records import artifact_events
from nemotron.serving import runtime
from nemotron.serving.endpoints import free_port
from tests import fake_wandb_api, wandb_offline
from tests.helpers import REPO, hf_home, nemotron, sacct_state, squeue
from tests.sentinels import Sentinels, watch_harnesses

pytestmark = pytest.mark.cluster  # the worker serves on local-slurm-ssh (its NEMOTRON_PROFILE)

POOL = "nemotron-eval"
DEPLOYMENT = "nano3-eval/nano3-eval"
ENV = {"NEMOTRON_ENV_FILE": str(REPO / "config" / "env.example.toml")}  # [wandb] entity YOUR-TEAM, project nemotron
CHECKPOINT = str(runtime.builtin_model_dir("smollm2-135m-instruct"))
SFT = {"qualified_name": "YOUR-TEAM/nemotron/nano3-sft-model:v2", "digest": "5f" * 16,
       "aliases": ["latest", "step_300"], "references": [f"file://{CHECKPOINT}"]}


def prefect(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **ENV, "COLUMNS": "250"})


@pytest.fixture(scope="module")
def deployment():
    r = prefect("work-pool", "create", POOL, "--type", "process", "--overwrite")
    assert r.returncode == 0, r.stdout + r.stderr
    r = prefect("--no-prompt", "deploy", "--all")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(DEPLOYMENT)
    yield found
    with get_client(sync_client=True) as client:  # the session's server as it was: other tests submit without one
        for d in client.read_deployments():
            client.delete_deployment(d.id)


@pytest.fixture(scope="module")
def worker_secrets() -> Sentinels:
    """The credentials the team's worker holds (issue 27): its variables, netrc and env.toml."""
    return Sentinels("worker")


@pytest.fixture(scope="module")
def worker(deployment, tmp_path_factory, worker_secrets):
    """A process worker whose flow runs see the fake `wandb.Api` (artifact look-ups only)."""
    tmp = tmp_path_factory.mktemp("worker")
    artifacts = {"YOUR-TEAM/nemotron/nano3-sft-model:latest": SFT}
    # where results go is the worker's setting (runs started through Prefect may not redirect writes)
    env = {**os.environ, **ENV, **worker_secrets.env, **fake_wandb_api.subprocess_env(tmp, artifacts),
           "HF_HOME": str(hf_home()), "WANDB_MODE": "offline", "NEMOTRON_OUTPUT_DIR": str(tmp / "results"),
           "NEMOTRON_PROFILE": "local-slurm-ssh"}  # runs that name no profile serve on the cluster (issue 15)
    with open(tmp / "worker.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--limit", "2"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield tmp
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for_run(run_id: str, timeout: float = 900):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(UUID(run_id))
            if run.state and run.state.is_final():
                return run
            time.sleep(3)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s: {run.state}")


def runs_of(deployment) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}))


def test_deployment_has_the_typed_parameter_schema(deployment):
    schema = deployment.parameter_openapi_schema
    props = schema["properties"]
    assert set(props) == {"model", "tasks", "config", "profile", "overrides", "force_squash"}
    assert deployment.enforce_parameter_schema and deployment.work_pool_name == POOL
    text = json.dumps(schema)
    assert '"hellaswag"' in text and '"adlr_mmlu"' in text  # task names are an enum
    assert '"local"' in text and '"default"' in text  # so are config names
    # issue 28: evaluations at once are bounded; more wait their turn (prefect.yaml)
    assert deployment.global_concurrency_limit.limit == 4
    assert deployment.concurrency_options.collision_strategy == "ENQUEUE"


@pytest.mark.parametrize("param, value", [("tasks", '["nope"]'), ("model", "not a reference!"),
                                          ("overrides", '["no-equals-sign"]')])
def test_server_rejects_a_bad_parameter(deployment, param, value):
    before = len(runs_of(deployment))
    r = prefect("deployment", "run", DEPLOYMENT, "--param", f"{param}={value}")
    assert r.returncode != 0
    assert "Validation failed" in r.stdout + r.stderr, r.stdout + r.stderr
    assert len(runs_of(deployment)) == before  # no flow run was created


def start_run(*params: str) -> str:
    """`prefect deployment run` with these `--param`s; returns the flow run id."""
    r = prefect("deployment", "run", DEPLOYMENT, *(a for p in params for a in ("--param", p)))
    assert r.returncode == 0, r.stdout + r.stderr
    (run_id,) = re.findall(r"UUID: ([0-9a-f-]{36})", r.stdout)
    return run_id


def run_dir_of(root, run_id: str):
    """The results folder a flow run wrote (its manifest names the run)."""
    (found,) = [m.parent for m in root.glob("*/*/manifest.json") if json.loads(m.read_text())["flow_run_id"] == run_id]
    return found


@pytest.mark.e2e
def test_deployment_run_serves_the_artifact_on_slurm_over_ssh_and_exports(worker, worker_secrets, tmp_path):
    """`prefect deployment run --param model=sft:latest ...` → the worker runs the flow: the fake
    `wandb.Api` resolves the artifact to the built-in model's folder (a file:// reference), real vLLM
    serves it in a Slurm job reached through NeMo-Run's SSH tunnel (slurm.sh's login node) and our
    port forward, the harness runs here, and the export is real W&B, offline.
    The same evaluation is started twice at once (issue 14: a trigger and a user, say): one server
    launch, and both runs Completed with the same scores.
    Issue 27: the worker's secrets (its variables, netrc, a profile's env_vars) reach no file of the worker or the
    cluster, no harness, not the Prefect database."""
    out = worker / "results"
    params = ("model=sft:latest", 'tasks=["hellaswag", "gsm8k"]', "config=local",  # no profile: the worker's
              "overrides=" + json.dumps(["evaluation.nemo_evaluator_config.config.params.limit_samples=1",
                                         "evaluation.nemo_evaluator_config.config.params.max_new_tokens=32"]))
    started = time.time() - 1
    with watch_harnesses(worker_secrets.values()) as harnesses:
        ids = [start_run(*params), start_run(*params)]
        finished = [wait_for_run(i) for i in ids]
    for run in finished:
        assert run.state.is_completed(), (run.state, (worker / "worker.log").read_text()[-3000:])
        assert run.name == "eval-sft:latest" and run.parameters["tasks"] == ["hellaswag", "gsm8k"]
        assert {"model:YOUR-TEAM/nemotron/nano3-sft-model:v2", "stage:sft"} <= set(run.tags)  # the version evaluated
    served = [d for d in map(lambda i: run_dir_of(out, i), ids) if (d / "server.json").exists()]
    assert len(served) == 1, "one evaluation, one server launch"
    (summary,) = [served[0] / "results.json"]
    run_id = json.loads((served[0] / "manifest.json").read_text())["flow_run_id"]
    other = run_dir_of(out, next(i for i in ids if i != run_id))
    reused = json.loads((other / "results.json").read_text())["results"]
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [UUID(run_id)]}))
    assert sorted(t.name for t in tasks if "benchmark" in t.tags) == ["gsm8k", "hellaswag"]

    doc = json.loads(summary.read_text())
    assert [(x["benchmark"], x["status"]) for x in doc["results"]] == [("hellaswag", "completed"),
                                                                       ("gsm8k", "completed")]
    assert all(x["scores"] for x in doc["results"])
    assert all(x["reused"] for x in reused) and [x["scores"] for x in reused] == [x["scores"] for x in doc["results"]]
    waited = nemotron("nano3", "eval", "logs", next(i for i in ids if i != run_id))
    assert "waiting for it, to reuse its result" in waited.stdout and "nothing to serve" in waited.stdout
    server = json.loads((summary.parent / "server.json").read_text())
    assert server["executor"] == "slurm" and server["job_id"].isdigit()
    assert server["job_dir"].startswith("/var/tmp/nemotron-login/jobs/")  # the profile's remote_job_dir
    assert (summary.parent / "server.log").read_text().count("Application startup complete") == 1
    assert not squeue() and sacct_state(server["job_id"]) == "CANCELLED"  # torn down, not left to time out
    manifest = json.loads((summary.parent / "manifest.json").read_text())
    assert manifest["profile"] == "local-slurm-ssh"  # the worker's default (NEMOTRON_PROFILE), named in no parameter
    assert manifest["model"]["resolved"] == "YOUR-TEAM/nemotron/nano3-sft-model:v2"  # resolved on the worker
    assert f"--model {CHECKPOINT} " in manifest["server"]["command"]  # served in place, not downloaded

    logs = nemotron("nano3", "eval", "logs", run_id)  # the worker's run, read back from the Prefect API
    assert logs.returncode == 0, logs.stderr
    assert f"[serve] job {server['job_id']}: RUNNING" in logs.stdout and "healthy after" in logs.stdout
    assert re.search(r"server at http://\S+:\d+, reached as http://127\.0\.0\.1:\d+", logs.stdout)  # forwarded

    (wb,) = wandb_offline.runs(summary.parent)  # the W&B run beside the results it records
    assert (wb.run.entity, wb.run.project, wb.run.run_group) == ("YOUR-TEAM", "nemotron", "nano3-sft-model")
    assert wb.config["model"]["resolved"] == "YOUR-TEAM/nemotron/nano3-sft-model:v2"
    for result in doc["results"]:
        for score in result["scores"]:
            assert float(wb.summary[f"{result['benchmark']}/{score['metric']}"]) == score["value"]
    results = wb.artifact("evaluation-results")
    assert {"hellaswag/results.yml", "gsm8k/results.yml", "manifest.json", "server.log"} <= \
        {c.path for c in results.manifest.contents}
    assert json.loads(results.metadata)["inputs"] == ["YOUR-TEAM/nemotron/nano3-sft-model:v2"]

    # the worker's secrets stayed with it
    assert worker_secrets.found_in(worker) == []  # results, W&B offline files, the worker's log
    assert worker_secrets.found_in("/var/tmp/nemotron-login/jobs", runtime.home(), since=started) == []
    assert worker_secrets.found_in_prefect() == []
    assert len(harnesses.seen) >= 2 and harnesses.found == [], harnesses.found


def test_batch_submits_a_run_and_returns_at_once(worker, deployment, tmp_path):
    """`--batch`: a flow run of the deployment, printed with its id and UI URL; the worker runs it
    (here it fails fast: the artifact does not exist, so nothing is served)."""
    start = time.monotonic()
    r = nemotron("nano3", "eval", "--batch", "local-slurm", "-c", "local", "-t", "hellaswag", "run.model=rl:v404",
                 env=ENV)
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr[-3000:]
    (run_id,) = re.findall(r"\(([0-9a-f-]{36})\)", r.stdout)
    assert f"/runs/flow-run/{run_id}" in r.stdout
    assert elapsed < 30, f"--batch took {elapsed:.0f} s"
    assert "to the Prefect deployment nano3-eval/nano3-eval" in r.stdout  # which of the two ways it went
    # what the worker would refuse is refused here, before anything is created
    refused = nemotron("nano3", "eval", "--batch", "local-slurm", "-c", "local", "deployment.command=id", env=ENV)
    assert refused.returncode == 2
    assert "'deployment.command' is not allowed in a run started through Prefect" in refused.stderr
    run = wait_for_run(run_id, timeout=300)
    assert run.parameters == {"tasks": ["hellaswag"], "config": "local", "profile": "local-slurm",
                              "overrides": ["run.model=rl:v404"],
                              "force_squash": False}
    assert run.deployment_id == deployment.id and run.name == "eval-rl:v404"
    assert run.state.is_failed() and "wandb artifact ls YOUR-TEAM/nemotron" in run.state.message
    assert not (worker / "results" / "rl-v404").exists()  # nothing was served or written


SECRET = "relay-test-secret"


@pytest.fixture(scope="module")
def relay(deployment, tmp_path_factory):
    """deployments/wandb_relay.py as W&B would call it, emitting into the session's Prefect server."""
    port = free_port()
    log = tmp_path_factory.mktemp("relay") / "relay.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "deployments" / "wandb_relay.py"), "--port", str(port)],
                                env={**os.environ, "WANDB_WEBHOOK_SECRET": SECRET}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)


def webhook(version: str, event_type: str = "ADD_ARTIFACT_ALIAS", alias: str = "latest") -> bytes:
    """A body as W&B renders deployments/wandb-webhook-payload.json (default: an alias added to a version)."""
    template = (REPO / "deployments" / "wandb-webhook-payload.json").read_text()
    values = {"event_type": event_type, "event_author": "trainer", "alias": alias,
              "artifact_version": "wandb-artifact://_id/QXJ0aWZhY3Q6MTIz", "artifact_version_string": version,
              "artifact_collection_name": version.rsplit("/", 1)[1].split(":")[0], "entity_name": "YOUR-TEAM",
              "project_name": "nemotron"}
    for key, value in values.items():
        template = template.replace("${" + key + "}", value)
    return template.encode()


def stored_events(event_id: str, wait: float = 20) -> list:
    """The events with this id the Prefect server has stored (waits a little for one to land)."""
    deadline = time.monotonic() + wait
    while True:
        r = httpx.post(f"{os.environ['PREFECT_API_URL']}/events/filter",
                       json={"filter": {"id": {"id": [event_id]}}}, timeout=30)
        r.raise_for_status()
        if r.json()["events"] or time.monotonic() > deadline:
            return r.json()["events"]
        time.sleep(1)


def runs_for_model(deployment, model: str) -> list:
    return [r for r in runs_of(deployment) if r.parameters.get("model") == model]


def test_new_version_alias_and_watcher_for_one_version_start_one_evaluation(deployment, worker, relay,
                                                                             monkeypatch):
    """Issue 14: W&B's "new version" and "alias added" webhooks (the README subscribes to both), their
    repeats and the watcher's event for the same version are one event, so one flow run."""
    from flows.watch import watch_wandb_artifacts

    version = "YOUR-TEAM/nemotron/nano3-rl-model:v5"
    ids = set()
    for body in (webhook(version, "CREATE_ARTIFACT", ""), webhook(version), webhook(version)):
        headers = {"X-Wandb-Signature": artifact_events.signature(body, SECRET), "Content-Type": "application/json"}
        r = httpx.post(f"{relay}/wandb", content=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == version
        ids.add(r.json()["id"])
    fake_wandb_api.install(monkeypatch, {version: {"qualified_name": version}})
    assert watch_wandb_artifacts(artifacts=["nano3-rl-model"], entity="YOUR-TEAM", project="nemotron",
                                 emit_existing=True) == [version]
    assert len(ids) == 1 and len(stored_events(ids.pop())) == 1
    deadline = time.monotonic() + 90
    while not runs_for_model(deployment, version) and time.monotonic() < deadline:
        time.sleep(2)
    time.sleep(15)  # give the trigger every chance to fire again
    (run,) = runs_for_model(deployment, version)
    assert run.created_by.type == "AUTOMATION"
    # the worker ran it: the fake W&B knows no such version, so it fails before serving, naming it
    finished = wait_for_run(str(run.id), timeout=300)
    assert finished.state.is_failed() and "nano3-rl-model:v5" in finished.state.message
    assert finished.name == f"eval-{version}"  # named when the worker starts it


def test_a_deployment_run_that_would_run_a_command_is_refused_before_serving(worker, tmp_path):
    """Issue 14: parameters are data. `deployment.command` would be a shell line in the server's job script,
    run as the worker's user: the run fails at once naming the key, and nothing runs or is served."""
    marker = tmp_path / "pwned"
    run_id = start_run("config=local", "overrides=" + json.dumps([f"deployment.command=touch {marker}"]))
    run = wait_for_run(run_id, timeout=300)
    assert run.state.is_failed(), run.state
    assert "override 'deployment.command' is not allowed in a run started through Prefect" in run.state.message
    assert not marker.exists()
    assert not [m for m in (worker / "results").glob("*/*/manifest.json") if run_id in m.read_text()]
    # issue 19: a run `prefect deployment run` started, asked about from a machine with no record of it
    status = nemotron("nano3", "eval", "status", run_id, env={"NEMOTRON_HOME": str(tmp_path / "elsewhere")})
    assert status.returncode == 0, status.stderr
    assert "flow      Failed: override 'deployment.command' is not allowed" in status.stdout


def test_a_huge_body_is_refused_before_it_is_read(relay):
    """Issue 28: anyone can post to the relay; a 50 MB body without a signature is refused by its Content-Length at
    once (413), not read into memory first. One without a Content-Length (chunked) is cut off at the limit."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(relay)
    start = time.monotonic()
    with socket.create_connection((where.hostname, where.port), timeout=5) as conn:
        conn.sendall(b"POST /wandb HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 52428800\r\n\r\n" + b"{" * 65536)  # 64 KiB of the 50 MB sent
        answer = b""
        while b"at most" not in answer and (chunk := conn.recv(4096)):  # the headers, then the body
            answer += chunk
        answer = answer.decode(errors="replace")
    assert time.monotonic() - start < 1.0
    assert answer.startswith("HTTP/1.1 413") and "at most 65536 bytes" in answer, answer

    def chunks():
        for _ in range(50):
            yield b"{" * 1_048_576

    r = httpx.post(f"{relay}/wandb", content=chunks(), timeout=30)
    assert r.status_code == 413 and "at most 65536 bytes" in r.text


@pytest.mark.parametrize("signature", [None, "", "bm90IHRoZSBzaWduYXR1cmU="])
def test_bad_or_missing_signature_is_refused_and_emits_nothing(deployment, relay, signature):
    version = "YOUR-TEAM/nemotron/nano3-rl-model:v6"
    body = webhook(version)
    headers = {} if signature is None else {"X-Wandb-Signature": signature}
    r = httpx.post(f"{relay}/wandb", content=body, headers=headers, timeout=30)
    assert r.status_code == 401 and "X-Wandb-Signature" in r.text
    assert stored_events(artifact_events.from_webhook(json.loads(body))["id"], wait=5) == []
    assert not runs_for_model(deployment, version)


def test_watcher_announces_each_new_version_once(deployment, monkeypatch):
    """The scheduled watcher (for sites W&B cannot reach): first look records where the artifact
    stands, a new version becomes the relay's event (same id), a second look announces nothing."""
    from flows.watch import watch_wandb_artifacts

    name = f"watch-test-{int(time.time())}"
    path = f"YOUR-TEAM/nemotron/{name}"
    specs = {f"{path}:v{i}": {"qualified_name": f"{path}:v{i}"} for i in (0, 1)}
    fake_wandb_api.install(monkeypatch, specs)
    assert watch_wandb_artifacts(artifacts=[name], entity="YOUR-TEAM", project="nemotron") == []
    specs[f"{path}:v2"] = {"qualified_name": f"{path}:v2"}
    assert watch_wandb_artifacts(artifacts=[name], entity="YOUR-TEAM", project="nemotron") == [f"{path}:v2"]
    assert watch_wandb_artifacts(artifacts=[name], entity="YOUR-TEAM", project="nemotron") == []
    deadline = time.monotonic() + 90
    while not runs_for_model(deployment, f"{path}:v2") and time.monotonic() < deadline:
        time.sleep(2)
    assert len(runs_for_model(deployment, f"{path}:v2")) == 1  # the trigger evaluates exactly that version
    assert not runs_for_model(deployment, f"{path}:v1")


def test_batch_profile_is_resolved_on_the_worker_and_status_and_logs_come_from_the_api(worker, worker_secrets,
                                                                                   deployment, tmp_path):
    """Issue 19: the CLI knows a profile the worker does not. The run is submitted, fails on the worker
    before it records anything on a machine, and `eval status|logs ID` — asked from a machine that has
    no record of it (an empty NEMOTRON_HOME) — show the failure and its logs from the Prefect API."""
    env_toml = tmp_path / "env.toml"
    env_toml.write_text('[cli-only]\nexecutor = "slurm"\naccount = "root"\npartition = "batch"\ntunnel = "local"\n')
    r = nemotron("nano3", "eval", "--batch", "cli-only", "-c", "local", "-t", "hellaswag",
                 env={"NEMOTRON_ENV_FILE": str(env_toml)})
    assert r.returncode == 0, r.stderr
    assert "profile 'cli-only' is resolved on the worker, from its env.toml" in r.stdout
    (run_id,) = re.findall(r"\(([0-9a-f-]{36})\)", r.stdout)
    run = wait_for_run(run_id, timeout=300)
    assert run.state.is_failed() and "unknown profile 'cli-only' in " in run.state.message

    elsewhere = {"NEMOTRON_HOME": str(tmp_path / "another-machine")}
    status = nemotron("nano3", "eval", "status", run_id[:8], env=elsewhere)
    assert status.returncode == 0, status.stderr
    assert f"({run_id})" in status.stdout
    assert re.search(rf"flow +Failed: unknown profile 'cli-only' in {worker_secrets.env_file}; valid profiles: ",
                     status.stdout), status.stdout
    assert "results   not on this machine" in status.stdout
    logs = nemotron("nano3", "eval", "logs", run_id, env=elsewhere)
    assert logs.returncode == 0 and "unknown profile 'cli-only'" in logs.stdout
    missing = nemotron("nano3", "eval", "status", "0000dead", env=elsewhere)
    assert missing.returncode == 2 and "no run '0000dead': no flow run with that id" in missing.stderr
