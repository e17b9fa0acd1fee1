"""The Prefect UI of the real test server, read by a real browser (headless Chromium): what a person
sees of an evaluation — its run page, its benchmarks' task runs, and its artifacts.

Two evaluations of one model series (versions v1 then v2 of a W&B artifact, served by the fake
endpoint: v2 answers gsm8k's first question right), so v2's summary has a change to show.
"""

import html
import json
import re
import shutil
import subprocess
import sys
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.settings import PREFECT_API_URL

from flows.eval import nano3_eval
from nemotron.serving import runtime
from tests import fake_wandb_api
from tests.helpers import FAKE, fake_request
from tests.test_compare_flow import gsm8k_test

CHROMIUM = shutil.which("chromium")


def page_text(path: str, expect: str, attempts: int = 5, times: int = 1) -> str:
    """The visible text of a UI page once the app has rendered it (retried until `expect` shows `times` times:
    on a loaded machine the app may not have fetched every row within one load's virtual time)."""
    assert CHROMIUM, "no `chromium` on PATH: scripts/test.sh installs Debian's package"
    url = PREFECT_API_URL.value().removesuffix("/api") + path
    text = ""
    for _ in range(attempts):
        # A desktop-sized window: the UI's virtual scrollers (an artifact key's version timeline)
        # render only the rows inside the viewport, and headless Chromium's default one is too small.
        dom = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000",
                              "--virtual-time-budget=15000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120).stdout
        dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
        text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())
        if text.count(expect) >= times:
            break
    return text


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    """Run v1, then v2, of the series `ui-<random>` (so no earlier session's runs count)."""
    series = f"ui-{uuid.uuid4().hex[:6]}"
    builtin = runtime.builtin_model_dir("smollm2-135m-instruct")
    models = tmp_path_factory.mktemp("models")
    # one server command for both versions (served alike, so comparable); each version's checkpoint folder says
    # what it answers: v1 nothing right, v2 the first question (its answer is 18)
    command = f"deployment.command={sys.executable} {FAKE} --tag {models} --answers-in-model"
    ((question, _),) = gsm8k_test(1)
    states = []
    for version, answers in (("v1", {}), ("v2", {question: "The answer is 18."})):
        tmp = tmp_path_factory.mktemp(version)
        (models / version).mkdir()
        for f in builtin.iterdir():
            (models / version / f.name).symlink_to(f)
        (models / version / "answers.json").write_text(json.dumps(answers))
        with pytest.MonkeyPatch.context() as mp:
            fake_wandb_api.install(mp, {f"team/nemotron/{series}:latest": {
                "qualified_name": f"team/nemotron/{series}:{version}", "digest": version * 16,
                "aliases": ["latest"], "metadata": {"absolute_path": str(models / version)}}})
            mp.setenv("WANDB_MODE", "disabled")
            request = fake_request(tmp, extra=[
                command, "run.model=rl:latest", f"run.artifacts.rl={series}", "run.wandb.entity=team",
                "run.wandb.project=nemotron"])
            states.append(nano3_eval(**request, return_state=True))
    assert all(s.is_completed() for s in states), states
    run_id = states[1].state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))}
        (task,) = [t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
                   if "benchmark" in t.tags]
    return {"series": series, "run_id": run_id, "artifacts": artifacts, "task": task,
            "model": f"team/nemotron/{series}:v2"}


def test_run_page_shows_the_run_named_after_the_model_with_its_tags(evaluations):
    text = page_text(f"/runs/flow-run/{evaluations['run_id']}", "stage:rl")
    assert "Flow Run: eval-rl:latest" in text
    assert f"model:{evaluations['model']}" in text and "stage:rl" in text
    assert "Completed" in text and "1 Task run" in text
    params = page_text(f"/runs/flow-run/{evaluations['run_id']}?tab=Parameters", '"tasks"')
    assert '"model" : null' in params and '"gsm8k"' in params and '"config" : "local"' in params


def test_each_benchmark_is_a_task_run_named_after_it(evaluations):
    text = page_text(f"/runs/task-run/{evaluations['task'].id}", "benchmark")
    assert "Task Run: gsm8k" in text
    assert "benchmark" in text and f"model:{evaluations['model']}" in text


def test_score_table_shows_value_stderr_samples_seconds(evaluations):
    scores = evaluations["artifacts"][f"{evaluations['series']}-scores"]
    text = page_text(f"/artifacts/artifact/{scores.id}", "exact_match")
    assert f"Scores of {evaluations['model']}" in text
    assert "benchmark metric value stderr samples seconds" in text
    assert re.search(r"gsm8k exact_match__flexible-extract 1 1 \d+(\.\d)?", text), text


def test_summary_shows_the_change_against_the_previous_version(evaluations):
    series = evaluations["series"]
    summary = evaluations["artifacts"][f"{series}-summary"]
    text = page_text(f"/artifacts/artifact/{summary.id}", "Change against")
    assert f"Evaluation of {evaluations['model']} ( rl:latest )" in text
    assert f"Change against the previous evaluation of {series} : team/nemotron/{series}:v1" in text
    assert re.search(r"gsm8k exact_match__flexible-extract 1\.0000 1 \d+ \+1\.0000", text), text
    history = page_text(f"/artifacts/key/{series}-summary", "eval-rl:latest", times=2)
    assert history.count("eval-rl:latest") == 2  # both versions, newest first


def test_progress_artifact_reached_100_percent(evaluations):
    progress = evaluations["artifacts"]["nano3-eval-progress"]
    assert "Progress: 100%" in page_text(f"/artifacts/artifact/{progress.id}", "Progress:")
