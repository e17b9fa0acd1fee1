"""Issue 30, on the real stack: a harness other than lm-eval, in its own environment, scores the served model."""

import json
import os
import subprocess
import sys

import pytest

from nemotron.benchmarks import environments
from tests import wandb_offline
from tests.helpers import hf_home, scores
from tests.test_e2e import vllm_processes

# BFCL v3 by prompting (no native tool calls: SmolLM2 has none), one category of it; and lm-eval's gsm8k beside it
SUITE = ["evaluation.tasks=[{name: bfclv3_ast_prompting, nemo_evaluator_config: {config: {params: {task: simple}}}},"
         " {name: gsm8k}]", "evaluation.nemo_evaluator_config.config.params.limit_samples=3"]


@pytest.mark.e2e
def test_bfcl_in_its_own_environment_and_lm_eval_share_one_server_and_one_budget(tmp_path):
    """The embedded default with bfclv3_ast_prompting and gsm8k: the bfcl environment (numpy 1.26.4 there, the
    project's numpy here) runs nemo-evaluator and `bfcl`, lm-eval runs in the project's; SmolLM2, served once by vLLM,
    answers both harnesses' requests through the gate under one in-flight budget; the scores are recorded with the
    versions that made them and exported to W&B (offline)."""
    assert not vllm_processes(), "a vLLM server is already running"
    r = subprocess.run([sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", "local", *SUITE,
                        f"evaluation.output_dir={tmp_path}", "export.wandb.project=harnesses"],
                       capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "HF_HOME": str(hf_home()), "WANDB_MODE": "offline"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    assert environments.ready("bfcl")
    there = subprocess.run([str(environments.folder("bfcl") / "bin" / "python"), "-c",
                            "import numpy; print(numpy.__version__)"], capture_output=True, text=True).stdout.strip()
    import numpy
    assert there == "1.26.4" != numpy.__version__

    (summary,) = tmp_path.glob("smollm2-135m-instruct/*/results.json")
    doc = json.loads(summary.read_text())
    results = {r["benchmark"]: r for r in doc["results"]}
    assert {b: r["status"] for b, r in results.items()} == {"bfclv3_ast_prompting": "completed",
                                                            "gsm8k": "completed"}, results
    result = results["bfclv3_ast_prompting"]
    found = {s["metric"]: s["value"] for s in result["scores"]}
    assert "python_simple_ast_non_live" in found and 0.0 <= found["python_simple_ast_non_live"] <= 1.0, found
    assert ("bfclv3_ast_prompting", "python_simple_ast_non_live") in scores(out), out[-3000:]
    manifest = json.loads((summary.parent / "manifest.json").read_text())
    assert manifest["harness"]["nvidia-bfcl"] == "26.3"  # the versions that scored it
    log = (summary.parent / "bfclv3_ast_prompting" / "run_eval.log").read_text()
    assert "bfcl generate" in log and "--test-category simple" in log

    (launch,) = json.loads((summary.parent / "in-flight.json").read_text())  # one server launch for both
    for name in ("bfclv3_ast_prompting", "gsm8k"):  # both harnesses' requests crossed the gate
        counted = launch["benchmarks"][name]
        assert counted["requests"] >= 3 and counted["failed"] == 0, launch
    assert 0 < launch["peak_in_flight"] <= launch["budget"], launch  # one budget, shared
    assert manifest["harness"]["nvidia-lm-eval"] and manifest["harness"]["nemo-evaluator"], manifest["harness"]

    (wb,) = wandb_offline.runs(summary.parent)
    for score in result["scores"]:
        assert float(wb.summary[f"bfclv3_ast_prompting/{score['metric']}"]) == score["value"]
    assert not vllm_processes(), "a server outlived the run"


@pytest.mark.e2e
def test_mtbench_judged_by_the_served_model_sends_both_streams_through_the_gate(tmp_path):
    """MT-Bench in its own environment (PyTorch's CPU build there; its questions and judge prompts ship in its
    package, so it runs offline) on the embedded default with evaluation.judge.served=true: SmolLM2 answers the first
    question's two turns, then judges its own answers, both request streams through the gate of the one server launch
    (mtbench and mtbench-judge in in-flight.json), the judge's within its share of the budget. A 135M model writes no
    rating in MT-Bench's `[[N]]` format by itself (it wrote `Rating: 3.5`, which fastchat reads as missing): the
    judge's requests carry vLLM's structured outputs (evaluation.judge.add_params), which hold it to that format, and
    the scores are recorded and exported."""
    params = "evaluation.nemo_evaluator_config.config.params"
    rating = r"evaluation.judge.add_params={structured_outputs: {regex: 'Rating: \[\[([1-9]|10)\]\]'}}"
    r = subprocess.run([sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", "local", "-t", "mtbench",
                        "evaluation.judge.served=true", rating, f"{params}.limit_samples=1",
                        f"{params}.max_new_tokens=48", f"{params}.request_timeout=600",
                        f"{params}.extra.judge.max_tokens=48", f"{params}.extra.judge.request_timeout=600",
                        f"{params}.extra.judge.max_retries=1", "evaluation.retries=0",
                        f"evaluation.output_dir={tmp_path}", "export.wandb.project=judged"],
                       capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "HF_HOME": str(hf_home()), "WANDB_MODE": "offline"})
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    (summary,) = tmp_path.glob("smollm2-135m-instruct/*/results.json")
    (result,) = json.loads(summary.read_text())["results"]
    assert result["benchmark"] == "mtbench" and result["status"] == "completed", result
    found = {s["metric"]: s["value"] for s in result["scores"]}
    assert 1.0 <= found["average_score"] <= 10.0 and found["num_missing"] == 0, found  # MT-Bench's 1-10; all read
    (launch,) = json.loads((summary.parent / "in-flight.json").read_text())  # one server launch for both streams
    asked, judged = launch["benchmarks"]["mtbench"], launch["benchmarks"]["mtbench-judge"]
    assert asked["answered"] == 2 and judged["answered"] >= 2, launch  # two turns asked; each answer judged
    assert asked["failed"] == judged["failed"] == 0 and 0 < launch["peak_in_flight"] <= launch["budget"], launch
    assert 1 <= judged["peak_in_flight"] <= launch["judge_share"] < launch["budget"], launch
    (judgments,) = (summary.parent / "mtbench").rglob("judgements/*_single.jsonl")
    kept = [json.loads(line) for line in judgments.read_text().splitlines()]
    assert len(kept) == 2 and all(1 <= k["score"] <= 10 and "Rating: [[" in k["judgment"] for k in kept), kept
    manifest = json.loads((summary.parent / "manifest.json").read_text())
    assert manifest["harness"]["nvidia-mtbench-evaluator"] == "26.3"
    (wb,) = wandb_offline.runs(summary.parent)
    for metric, value in found.items():
        assert float(wb.summary[f"mtbench/{metric}"]) == value
