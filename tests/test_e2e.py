"""The Quick-start path on the real stack: vLLM (CPU) serving SmolLM2-135M through NeMo-Run,
nemo-evaluator per benchmark, the Prefect flow — with one sample per (sub)task, zero-shot prompts
and short generations, so the whole suite fits a test run.

One suite, one fault: the vLLM server is SIGKILLed (with its engine process) while the first
benchmarks run. The flow must notice, relaunch it once, finish every benchmark with full scores,
and not recompute what the first server answered (the response cache replays it). Then the same
evaluation again must reuse everything: no server, no request.

The same run carries distinctive secrets (issues 14, 27: tests/sentinels.py) — in WANDB_API_KEY, HF_TOKEN,
OPENAI_KEY, GITHUB_PAT, MY_SERVICE_AUTH, a 5-character DB_PASSWORD, a netrc, a literal deployment.env entry and a
`${oc.env:...}` override — and exports to W&B (offline): none of them may appear in anything it leaves (its
folders, ~/.cache/nemotron, the Prefect database) or in the environment of a harness while it runs.
"""

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from nemotron.serving import runtime
from tests.helpers import answered, hf_home, in_this_lane, kill_server_once_it_answered, nemotron
from tests.sentinels import Sentinels, watch_harnesses

SUITE = ["adlr_mmlu", "hellaswag", "arc_challenge", "adlr_arc_challenge_llama_25_shot",
         "adlr_winogrande_5_shot", "truthfulqa", "gsm8k"]
SMALL = ["evaluation.nemo_evaluator_config.config.params.limit_samples=1",
         "evaluation.nemo_evaluator_config.config.params.extra.num_fewshot=0",
         "evaluation.nemo_evaluator_config.config.params.max_new_tokens=32"]
KILL_AFTER = 12  # answered requests: mmlu (57) is under way


def vllm_processes() -> str:
    """Live vLLM processes of this test lane. A zombie (an engine core whose killed parent left it to PID 1, not
    reaped yet) has exited and holds nothing, so it is not a server that outlived a run."""
    listed = subprocess.run(["pgrep", "-af", "vllm.entrypoints|VLLM::"], capture_output=True, text=True).stdout
    return "".join(line for line in listed.splitlines(keepends=True)
                   if not exited(int(line.split()[0])) and in_this_lane(int(line.split()[0])))


def exited(pid: int) -> bool:
    try:  # the state follows the command name, which may hold spaces and parentheses
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (OSError, IndexError):
        return True  # gone since pgrep listed it


def cached_responses(benchmark_dir: Path) -> int:
    """Distinct requests a benchmark needed: the entries of lm-eval's own cache (`--use_cache`, one per answer)."""
    with sqlite3.connect(benchmark_dir / "lm_cache_rank0.db" / "cache.db") as db:
        return db.execute("select count(*) from Cache").fetchone()[0]


SERVER_TOKEN = "srv-e2e-e94d02"  # read by a `${oc.env:E2E_SERVER_TOKEN}` override


def leaked_to_prefect(since: float, values: list[str]) -> list[str]:
    """What the Prefect server stored of the flow runs started since then — the evaluation and its W&B export
    subflow: parameters, states, logs — that holds any of the values."""
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(limit=200) if r.created.timestamp() >= since]
        stored = "\n".join(json.dumps(r.parameters) + str(r.state.message) for r in runs)
        ids = LogFilterFlowRunId(any_=[r.id for r in runs])
        for offset in range(0, 20_000, 200):  # every page of their logs
            page = client.read_logs(log_filter=LogFilter(flow_run_id=ids), limit=200, offset=offset)
            stored += "\n".join(e.message for e in page)
            if len(page) < 200:
                break
    names = [r.name for r in runs]
    assert any(n.startswith("eval-") for n in names) and any(n.startswith("wandb-export-") for n in names), names
    assert "running gsm8k" in stored and "deployment.env.SERVICE_PASSWORD" in stored  # parameters and logs read
    return [v for v in values if v in stored]


def export_seen(since: float) -> str:
    """What the Prefect server holds of the W&B export subflows started since then (state, and its log lines
    that name W&B): told apart, a console that lost the line and an export that failed are two causes."""
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(limit=200)
                if r.created.timestamp() >= since and r.name.startswith("wandb-export-")]
        seen = [f"\n{r.name}: {r.state_name} {r.state.message if r.state else ''}" for r in runs]
        for r in runs:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id])), limit=200)
            seen += [f"\n  {e.level} {e.message[:500]}" for e in logs if "W&B" in e.message or e.level >= 40]
    return "\n-- the W&B export in Prefect --" + "".join(seen or ["\nno wandb-export flow run"])


@pytest.mark.e2e
def test_local_suite_survives_a_killed_server_and_a_rerun_reuses_everything(tmp_path):
    assert not vllm_processes(), "a vLLM server is already running"
    started = time.time() - 1
    sentinels = Sentinels("local")
    values = [*sentinels.values(), SERVER_TOKEN]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", "local", f"evaluation.output_dir={tmp_path}",
         "deployment.health_interval=1", *SMALL, sentinels.deployment_env_override(),
         "deployment.env.SERVER_TOKEN=${oc.env:E2E_SERVER_TOKEN}", "export.wandb.project=e2e"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HF_HOME": str(hf_home()), "WANDB_MODE": "offline", **sentinels.env,
             "E2E_SERVER_TOKEN": SERVER_TOKEN})
    with watch_harnesses(values) as harnesses:
        killed_after = kill_server_once_it_answered(tmp_path / "smollm2-135m-instruct", proc, KILL_AFTER)
        out, _ = proc.communicate(timeout=1800)
    assert killed_after, "the server was never killed: " + out[-3000:]
    assert proc.returncode == 0, out[-5000:]
    assert "the server died under" in out and "relaunching it (1/2)" in out
    assert "W&B: run eval-" in out and "(offline: sync with `wandb sync" in out, out[-8000:] + export_seen(started)

    (summary,) = tmp_path.glob("smollm2-135m-instruct/*/results.json")
    doc = json.loads(summary.read_text())
    assert [x["benchmark"] for x in doc["results"]] == SUITE
    for result in doc["results"]:
        assert result["status"] == "completed", result
        assert result["scores"], result
        for score in result["scores"]:
            assert score["samples"] and score["samples"] >= 1
            assert score["value"] is not None
    mmlu = doc["results"][0]["scores"][0]
    assert mmlu["metric"] == "exact_match" and mmlu["samples"] == 57  # limit 1 × 57 subjects
    table = out[out.index("benchmark "):]
    for bench in SUITE:
        assert bench in table

    # the progress board, to a pipe: plain lines, no terminal control characters; it ends with all answered
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out), "control characters in piped output"
    done = re.findall(r"\[progress\] suite done: (\d+)/(\d+) requests answered", out)
    assert done and done[-1][0] == done[-1][1], out[-3000:]
    assert re.search(r"\[progress\] \w+ running: \d+/\d+ requests answered", out)

    # the dry run's count of each benchmark is the count its harness built (lm-eval's own, in its log) at
    # every attempt; and the board's suite total is their sum
    dry = nemotron("nano3", "eval", "-c", "local", f"evaluation.output_dir={tmp_path}", *SMALL, "--dry-run", "--count",
                   env={"HF_HOME": str(hf_home())}, timeout=600)
    counted = dict(re.findall(r"(\w+) ([\d,]+)(?= ·)", dry.stdout.split("# requests: ")[1].splitlines()[0]))
    for bench in SUITE:
        attempts = (summary.parent / bench / "run_eval.log").read_text().split("# nemotron: run_eval")[1:]
        # per request type (a failed attempt prints lm-eval's output twice)
        built = [sum({kind: int(a) + int(b) for kind, a, b in re.findall(
            r"Running (\w+) requests[^\n]*\n(?:[^\n]*\n){0,5}?[^\n]*Cached requests: (\d+), Requests remaining: (\d+)",
            x)}.values()) for x in attempts]
        assert built and set(built) == {int(counted[bench].replace(",", ""))}, (bench, built, counted)
    assert int(done[-1][1]) == sum(int(v.replace(",", "")) for k, v in counted.items() if k in SUITE)

    # the redo bound: what both servers answered, against what the suite needed
    run = summary.parent
    first, second = answered(run / "server.log"), answered(run / "server-2.log")
    assert run.joinpath("server.log").read_text().count("Application startup complete") == 1
    assert run.joinpath("server-2.log").read_text().count("Application startup complete") == 1
    needed = sum(cached_responses(run / b) for b in SUITE)
    starts = sum((run / b / "run_eval.log").read_text().count("# nemotron: run_eval") for b in SUITE)
    redone = first + second - needed
    print(f"suite needed {needed} requests; server 1 answered {first} (killed after {killed_after}), "
          f"server 2 answered {second}; {starts} harness starts; beyond the needed: {redone}; "
          f"in flight: {(run / 'in-flight.json').read_text()[:2000]}")
    assert first >= killed_after and second < needed  # the relaunch did not start over
    # what can be lost is what was in flight: at most the gate's peak on the first server
    launches = json.loads((run / "in-flight.json").read_text())
    assert [x["launch"] for x in launches] == [1, 2]
    assert launches[0]["budget"] == 45  # 2 GiB of KV cache / (46080 B per token × 1024 tokens per request)
    assert 1 <= launches[0]["peak_in_flight"] <= 45 and launches[1]["peak_in_flight"] <= 45
    assert redone <= launches[0]["peak_in_flight"] + len(launches)  # + one capability probe per launch
    assert not vllm_processes(), "a server outlived the run"

    # secrets stayed home: not in the run folder (with the offline W&B run), the benchmark folders, the
    # NeMo-Run job folders, ~/.cache/nemotron, what the Prefect server stored of the run, or a harness's environment
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["deployment"]["env"]["SERVICE_PASSWORD"] == "***"
    assert list(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert sentinels.found_in(tmp_path) == []
    for record in run.glob("server.json"):
        job_dir = Path(json.loads(record.read_text())["job_dir"])
        assert (job_dir / "scripts" / "server.sh").is_file() and sentinels.found_in(job_dir.parent) == []
    assert sentinels.found_in(runtime.home(), Path.home() / ".cache" / "wandb", since=started) == []
    assert leaked_to_prefect(started, values) == [] and sentinels.found_in_prefect() == []
    assert len(harnesses.seen) >= len(SUITE) and harnesses.found == [], harnesses.found

    # the same evaluation again: every benchmark is complete under its key, so no server starts
    again = nemotron("nano3", "eval", "-c", "local", f"evaluation.output_dir={tmp_path}", *SMALL,
                     env={"HF_HOME": str(hf_home())}, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "nothing to serve" in again.stderr and "[serve]" not in again.stderr
    _, rerun = sorted(tmp_path.glob("smollm2-135m-instruct/*/results.json"))
    redo = json.loads(rerun.read_text())
    assert all(r["reused"] for r in redo["results"])
    assert [r["scores"] for r in redo["results"]] == [r["scores"] for r in doc["results"]]
    assert not (rerun.parent / "server.log").exists()
