"""The Quick-start path on the real stack: vLLM (CPU) serving SmolLM2-135M through NeMo-Run,
nemo-evaluator per benchmark, the Prefect flow — with a smaller sample limit."""

import json
import subprocess

import pytest

from tests.helpers import hf_home, nemotron

SUITE = ["adlr_mmlu", "hellaswag", "arc_challenge", "adlr_arc_challenge_llama_25_shot",
         "adlr_winogrande_5_shot", "truthfulqa", "gsm8k"]


def vllm_processes() -> str:
    return subprocess.run(["pgrep", "-af", "vllm.entrypoints|VLLM::"], capture_output=True, text=True).stdout


@pytest.mark.e2e
def test_local_suite_end_to_end(tmp_path):
    assert not vllm_processes(), "a vLLM server is already running"
    r = nemotron("nano3", "eval", "-c", "local", f"evaluation.output_dir={tmp_path}",
                 "evaluation.nemo_evaluator_config.config.params.limit_samples=1",
                 env={"HF_HOME": str(hf_home())}, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "W&B export skipped: no W&B project configured" in r.stderr  # a notice, not a failure

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
    table = r.stdout[r.stdout.index("benchmark "):]
    for bench in SUITE:
        assert bench in table
    assert (summary.parent / "server.log").read_text().count("Application startup complete") == 1  # served once
    assert not vllm_processes(), "the server outlived the run"

    # the same evaluation again: every benchmark is complete under its key, so no server starts
    again = nemotron("nano3", "eval", "-c", "local", f"evaluation.output_dir={tmp_path}",
                     "evaluation.nemo_evaluator_config.config.params.limit_samples=1",
                     env={"HF_HOME": str(hf_home())}, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "nothing to serve" in again.stderr and "[serve]" not in again.stderr
    _, second = sorted(tmp_path.glob("smollm2-135m-instruct/*/results.json"))
    redo = json.loads(second.read_text())
    assert all(r["reused"] for r in redo["results"])
    assert [r["scores"] for r in redo["results"]] == [r["scores"] for r in doc["results"]]
    assert not (second.parent / "server.log").exists()
