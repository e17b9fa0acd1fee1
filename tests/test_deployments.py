"""The deployment on real parts: the session's Prefect server, `prefect deploy --all` from the
repository, a process worker, and the evaluation run by that worker on the real model."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter

from nemotron import runtime
from tests import fake_wandb_api
from tests.helpers import REPO, hf_home, nemotron

POOL = "nemotron-eval"
DEPLOYMENT = "nano3-eval/nano3-eval"
ENV = {"NEMOTRON_ENV_FILE": str(REPO / "config" / "env.example.toml")}  # [wandb] entity YOUR-TEAM, project nemotron
SFT = {"qualified_name": "YOUR-TEAM/nemotron/nano3-sft-model:v2", "digest": "5f" * 16, "aliases": ["latest"],
       "metadata": {"absolute_path": str(runtime.builtin_model_dir("smollm2-135m-instruct"))}}


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
        return client.read_deployment_by_name(DEPLOYMENT)


@pytest.fixture(scope="module")
def worker(deployment, tmp_path_factory):
    """A process worker whose flow runs see the fake `wandb.Api` (artifact look-ups only)."""
    tmp = tmp_path_factory.mktemp("worker")
    artifacts = {"YOUR-TEAM/nemotron/nano3-sft-model:latest": SFT}
    env = {**os.environ, **ENV, **fake_wandb_api.subprocess_env(tmp, artifacts), "HF_HOME": str(hf_home())}
    with open(tmp / "worker.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--limit", "1"],
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


@pytest.mark.parametrize("param, value", [("tasks", '["nope"]'), ("model", "not a reference!"),
                                          ("overrides", '["no-equals-sign"]')])
def test_server_rejects_a_bad_parameter(deployment, param, value):
    before = len(runs_of(deployment))
    r = prefect("deployment", "run", DEPLOYMENT, "--param", f"{param}={value}")
    assert r.returncode != 0
    assert "Validation failed" in r.stdout + r.stderr, r.stdout + r.stderr
    assert len(runs_of(deployment)) == before  # no flow run was created


@pytest.mark.e2e
def test_deployment_run_with_parameters_evaluates_through_the_worker(worker, tmp_path):
    out = tmp_path / "results"
    r = prefect("deployment", "run", DEPLOYMENT, "--param", "model=sft:latest", "--param", 'tasks=["gsm8k"]',
                "--param", "config=local", "--param",
                "overrides=" + json.dumps([f"evaluation.output_dir={out}",
                                           "evaluation.nemo_evaluator_config.config.params.limit_samples=1"]))
    assert r.returncode == 0, r.stdout + r.stderr
    (run_id,) = re.findall(r"UUID: ([0-9a-f-]{36})", r.stdout)
    run = wait_for_run(run_id)
    assert run.state.is_completed(), (run.state, (worker / "worker.log").read_text()[-3000:])
    assert run.name == "eval-sft:latest"
    assert run.parameters["model"] == "sft:latest" and run.parameters["tasks"] == ["gsm8k"]
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]}))
    assert [t.name for t in tasks if "benchmark" in t.tags] == ["gsm8k"]
    (summary,) = out.glob("sft-latest/*/results.json")
    doc = json.loads(summary.read_text())
    assert [(x["benchmark"], x["status"]) for x in doc["results"]] == [("gsm8k", "completed")]
    manifest = json.loads((summary.parent / "manifest.json").read_text())
    assert manifest["model"]["resolved"] == "YOUR-TEAM/nemotron/nano3-sft-model:v2"  # resolved on the worker
    assert (summary.parent / "server.log").read_text().count("Application startup complete") == 1


def test_batch_submits_a_run_and_returns_at_once(worker, deployment, tmp_path):
    """`--batch`: a flow run of the deployment, printed with its id and UI URL; the worker runs it
    (here it fails fast: the artifact does not exist, so nothing is served)."""
    start = time.monotonic()
    r = nemotron("nano3", "eval", "--batch", "local-slurm", "-c", "local", "-t", "hellaswag", "run.model=rl:v404",
                 f"evaluation.output_dir={tmp_path}", env=ENV)
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr[-3000:]
    (run_id,) = re.findall(r"\(([0-9a-f-]{36})\)", r.stdout)
    assert f"/runs/flow-run/{run_id}" in r.stdout
    assert elapsed < 30, f"--batch took {elapsed:.0f} s"
    run = wait_for_run(run_id, timeout=300)
    assert run.parameters == {"tasks": ["hellaswag"], "config": "local", "profile": "local-slurm",
                              "overrides": ["run.model=rl:v404", f"evaluation.output_dir={tmp_path}"],
                              "force_squash": False}
    assert run.deployment_id == deployment.id and run.name == "eval-rl:v404"
    assert run.state.is_failed() and "wandb artifact ls YOUR-TEAM/nemotron" in run.state.message
    assert not list(tmp_path.iterdir())  # nothing was served or written


def test_batch_without_a_server_says_how_to_start_one():
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    r = subprocess.run([sys.executable, "-m", "nemotron.cli", "nano3", "eval", "--batch", "local-slurm", "-c", "local",
                        "-t", "hellaswag"], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={**env, **ENV, "PREFECT_HOME": os.environ.get("PREFECT_HOME", "") + "-empty"})
    assert r.returncode == 2
    assert r.stderr.startswith("error: --batch submits to a Prefect server and none is configured")
    assert "prefect server start" in r.stderr and len(r.stderr.strip().splitlines()) == 1
