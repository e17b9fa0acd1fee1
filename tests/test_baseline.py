"""The baseline and the gate's judgement (nemotron.records.baseline) at unit level: results folders as the flow
writes them, and a stand-in for the look-up the flow does through Prefect."""

from types import SimpleNamespace

from nemotron.config.schema import load_config
from nemotron.records import baseline, compare
from nemotron.records.results import Previous
from tests.test_compare import evaluation

SAME = {"strict-match": [1.0] * 30 + [0.0] * 10}
WORSE = {"strict-match": [0.0] * 40}


def gate(baseline_ref="previous", fail_on="inconclusive"):
    return SimpleNamespace(baseline=baseline_ref, fail_on=fail_on,
                           rules=[SimpleNamespace(metric="*", max_drop=0.3, primary=False)])


def test_only_a_completed_untripped_evaluation_of_another_version_is_accepted():
    assert baseline.accepted("rl:v2", True, ["model:rl:v2"], other_than="rl:v3")
    assert not baseline.accepted("rl:v3", True, [], other_than="rl:v3")  # this version again: no "previous"
    assert not baseline.accepted("rl:v2", False, [], other_than="rl:v3")  # failed, crashed or still running
    assert not baseline.accepted("rl:v2", True, ["regression"], other_than="rl:v3")
    assert not baseline.accepted("rl:v2", True, ["inconclusive"], other_than="rl:v3")
    assert baseline.accepted("rl:v2", True, [], version="rl:v2") and not baseline.accepted("rl:v1", True, [],
                                                                                           version="rl:v2")


def test_a_drop_against_the_previous_evaluation_is_a_regression_and_none_passes(tmp_path):
    before, same, worse = (evaluation(tmp_path, n, o) for n, o in [("v2", SAME), ("v3", SAME), ("v4", WORSE)])
    previous = Previous("rl:v2", "eval-rl", "2026-12-01 10:00 UTC", (), run_dir=str(before))
    for run, verdict in [(same, "pass"), (worse, "regression")]:
        changes = baseline.changes_against(previous, run, lambda *a: None)
        outcome = baseline.judge(gate(), previous, changes, None, run, lambda *a: None)
        assert outcome.verdict == verdict and outcome.baseline == "rl:v2" and outcome.failed == (verdict != "pass")


def test_a_version_baseline_that_cannot_be_looked_up_found_or_read_fails_the_gate(tmp_path):
    cfg = load_config("local")
    run = evaluation(tmp_path, "v3", SAME)
    warn = []

    def failing(key, version):
        raise ConnectionError("the Prefect API does not answer")

    cases = [(None, "no look-up of earlier evaluations here"), (failing, "the look-up of '/ckpt/v2' failed"),
             (lambda key, version: None, "baseline '/ckpt/v2' not found"),
             (lambda key, version: Previous(version, "eval", "", (), run_dir=None), "not found"),
             (lambda key, version: Previous(version, "eval", "", (), run_dir=str(tmp_path / "gone")),
              "could not be compared")]
    for look_up, says in cases:
        outcome = baseline.judge(gate("/ckpt/v2", fail_on="regression"), None, None, cfg, run, warn.append,
                                 look_up=look_up)
        assert outcome.failed and outcome.reasons()[0].startswith(compare.CANNOT_LOOK), outcome.reasons()
        assert says in outcome.reasons()[0], outcome.reasons()


def test_a_version_baseline_found_with_its_folder_is_compared_and_the_key_is_the_series(tmp_path):
    cfg = load_config("local")
    before, run = evaluation(tmp_path, "v2", SAME), evaluation(tmp_path, "v3", WORSE)
    asked = []

    def look_up(key, version):
        asked.append((key, version))
        return Previous(version, "eval-v2", "", (), run_dir=str(before))

    outcome = baseline.judge(gate("/ckpt/v2"), None, None, cfg, run, lambda *a: None, look_up=look_up)
    assert outcome.verdict == "regression" and outcome.baseline == "/ckpt/v2"
    assert asked == [("v2-scores", "/ckpt/v2")]
