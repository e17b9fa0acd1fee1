"""Resume without recomputing: results are keyed by model, task and harness config.

The fake endpoint journals each start and each request, so the test counts what reached a server.
(The real-model re-run is in tests/test_e2e.py.)
"""

import json
from pathlib import Path

from flows.eval import nano3_eval
from nemotron.benchmarks import RESULT_FILE
from tests.helpers import fake_request


def journal(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def run_summary(state) -> dict:
    return json.loads((Path(state.result().run_dir) / "results.json").read_text())


def test_complete_benchmarks_are_reused_and_a_half_done_one_replays_its_answers(tmp_path):
    log = tmp_path / "journal"
    request = fake_request(tmp_path, "--journal", str(log), extra=[
        "evaluation.nemo_evaluator_config.config.params.limit_samples=3"])

    first = nano3_eval(**request, return_state=True)
    assert first.is_completed()
    served = journal(log)
    assert served.count("start") == 1 and served.count("request") >= 3
    scores = run_summary(first)["results"][0]["scores"]

    # the same evaluation again: nothing is served, nothing is sent, the same scores come back
    second = nano3_eval(**request, return_state=True)
    assert second.is_completed()
    assert journal(log) == served
    again = run_summary(second)["results"][0]
    assert again["reused"] is True and again["scores"] == scores
    assert (Path(first.result().run_dir) / "server.log").exists()
    assert not (Path(second.result().run_dir) / "server.log").exists()

    # a run that answered everything but died before recording: served again, every answer from the cache
    (folder,) = (tmp_path / "benchmarks").glob("gsm8k-*")
    (folder / RESULT_FILE).unlink()
    (folder / "results.yml").unlink()
    third = nano3_eval(**request, return_state=True)
    assert third.is_completed()
    assert journal(log).count("start") == 2  # the server was needed to finish the benchmark ...
    assert journal(log).count("request") == served.count("request")  # ... but no request was sent again
    assert run_summary(third)["results"][0]["scores"] == scores
