"""Comparisons: like for like, paired tests against known values, the regression rules, `eval compare`."""

import json

import numpy as np
import pytest
import yaml
from scipy.stats import chi2

from nemotron.errors import ConfigError
from nemotron.records import compare
from nemotron.records.compare import Rule
from tests.helpers import nemotron

STAMP = "2026-12-01T03-00-27.730784"
HARNESS = {"nvidia-lm-eval": "26.3", "nemo-evaluator": "0.2.8"}
SERVING = {"engine": "vllm", "vllm": "0.32.0", "tensor_parallel_size": "1", "dtype": "float32"}


def evaluation(root, name, outcomes: dict[str, list[float]], limit=40, harness=None, parallelism=45,
               tokenizer="/models/a", metric="exact_match", task="gsm8k", filters=("strict-match",),
               serving=SERVING):
    """A results folder as the flow writes it, with lm-eval's per-sample records: `outcomes` per filter."""
    run = root / name
    bench = root / "benchmarks" / f"{task}-{name}"
    (bench / "model").mkdir(parents=True)
    run.mkdir(parents=True)
    params = {"task": task, "limit_samples": limit, "parallelism": parallelism, "request_timeout": 600,
              "extra": {"num_fewshot": 5, "tokenizer": tokenizer}}
    (bench / "nemotron_run_config.yml").write_text(yaml.safe_dump(
        {"config": {"type": f"lm-evaluation-harness.{task}", "params": params}}))
    (bench / "model" / f"results_{STAMP}.json").write_text(json.dumps({"group_subtasks": {task: []},
                                                                           "higher_is_better": {task: {metric: True}}}))
    with open(bench / "model" / f"samples_{task}_{STAMP}.jsonl", "w") as f:
        for flt in filters:
            for i, value in enumerate(outcomes[flt]):
                f.write(json.dumps({"doc_id": i, "doc_hash": f"d{i}", "prompt_hash": f"p{i}", "filter": flt,
                                    "metrics": [metric], metric: value}) + "\n")
    scores = [{"benchmark": task, "metric": metric if flt == "none" else f"{metric}__{flt}",
               "value": float(np.mean(outcomes[flt])), "stderr": None, "samples": len(outcomes[flt])}
              for flt in filters]
    (run / "results.json").write_text(json.dumps({"schema_version": 1, "model": name, "failed": [], "results": [
        {"benchmark": task, "status": "completed", "output_dir": str(bench), "seconds": 1.0, "scores": scores}]}))
    (run / "manifest.json").write_text(json.dumps({"harness": harness or HARNESS, "model": {"ref": name},
                                                        **({"serving": serving} if serving else {})}))
    return run


def test_binary_metrics_get_the_score_test_continuous_ones_the_paired_t(tmp_path):
    a = evaluation(tmp_path, "a", {"strict-match": [0.0] * 40})
    b = evaluation(tmp_path, "b", {"strict-match": [1.0] * 12 + [0.0] * 28})
    (up,) = compare.compare(compare.load(a), compare.load(b))
    assert (up.paired, up.test) == (40, "score (Tango)") and up.difference == pytest.approx(0.3) and up.low > 0
    c = evaluation(tmp_path, "c", {"strict-match": [0.2, 0.4, 0.1, 0.3] * 5}, metric="mc2")
    d = evaluation(tmp_path, "d", {"strict-match": [0.25, 0.4, 0.2, 0.3] * 5}, metric="mc2")
    (cont,) = compare.compare(compare.load(c), compare.load(d))
    assert cont.test == "paired t" and cont.difference == pytest.approx(0.0375)
    e = evaluation(tmp_path, "e", {"strict-match": [0.2] * 10}, metric="mc2")
    f = evaluation(tmp_path, "f", {"strict-match": [0.25] * 10}, metric="mc2")
    (flat,) = compare.compare(compare.load(e), compare.load(f))
    assert flat.tested is None and "no error to estimate" in flat.describe()


def test_a_real_change_is_significant_with_its_sign_and_a_small_one_is_not(tmp_path):
    base = evaluation(tmp_path, "v1", {"strict-match": [0.0] * 40})
    better = evaluation(tmp_path, "v2", {"strict-match": [1.0] * 16 + [0.0] * 24}, parallelism=7,
                        tokenizer="/models/b")  # how it was sent and where the tokenizer was: still comparable
    slightly = evaluation(tmp_path, "v3", {"strict-match": [1.0] * 2 + [0.0] * 38})
    (up,) = compare.compare(compare.load(base), compare.load(better))
    assert up.comparable and up.paired == 40 and up.difference == pytest.approx(0.4)
    assert up.significant and up.p == pytest.approx(chi2.sf(16, 1)) and up.low > 0  # McNemar: (16 − 0)² / 16
    assert up.describe().startswith("+0.4000 [") and up.describe().endswith("significant")
    (down,) = compare.compare(compare.load(better), compare.load(base))
    assert down.significant and down.difference == pytest.approx(-0.4) and down.high < 0
    (small,) = compare.compare(compare.load(base), compare.load(slightly))
    assert small.comparable and not small.significant and small.p == pytest.approx(chi2.sf(2, 1))


def test_different_settings_or_harness_are_not_comparable_and_say_what_differs(tmp_path):
    a = evaluation(tmp_path, "a", {"strict-match": [0.0] * 3}, limit=3)
    b = evaluation(tmp_path, "b", {"strict-match": [1.0] * 10}, limit=10)
    c = evaluation(tmp_path, "c", {"strict-match": [0.0] * 3}, limit=3, harness={**HARNESS, "nvidia-lm-eval": "26.4"})
    (x,) = compare.compare(compare.load(a), compare.load(b))
    assert not x.comparable and x.differs == ("limit_samples 3 → 10",) and x.p is None
    assert x.describe() == "not comparable: limit_samples 3 → 10"
    (y,) = compare.compare(compare.load(a), compare.load(c))
    assert y.differs == ("nvidia-lm-eval 26.3 → 26.4",)
    # a gate that can compare nothing does not pass: it fails, saying why (not on the drop itself)
    outcome = compare.gate([compare.compare(compare.load(b), compare.load(a))[0]], [Rule("*", 0.0)], "b",
                           "regression")
    (why,) = outcome.reasons()
    assert why.startswith("the gate could not look: nothing the rules gate could be compared with the baseline "
                          "(not comparable: limit_samples 10 → 3)"), why
    assert outcome.verdict == "inconclusive" and outcome.failed  # whatever fail_on says


def test_each_gated_metric_is_a_regression_a_pass_or_inconclusive_against_its_margin(tmp_path):
    """Issue 26: regression when the drop is shown to exceed max_drop, pass when such a drop is ruled out,
    inconclusive when the documents can tell neither; `exact_match` names both filters."""
    base = evaluation(tmp_path, "v1", {"strict-match": [1.0] * 20 + [0.0] * 20, "flexible-extract": [1.0] * 40},
                      filters=("strict-match", "flexible-extract"))
    worse = evaluation(tmp_path, "v2", {"strict-match": [0.0] * 40, "flexible-extract": [1.0] * 40},
                       filters=("strict-match", "flexible-extract"))
    changes = compare.compare(compare.load(base), compare.load(worse))
    assert [c.metric for c in changes] == ["exact_match__strict-match", "exact_match__flexible-extract"]
    outcome = compare.gate(changes, [Rule("exact_match__strict-match", 0.01)], "v1", "inconclusive")
    (line,) = outcome.reasons()
    assert line.startswith("regression: gsm8k exact_match__strict-match 0.5000 → 0.0000: -0.5000"), line
    assert outcome.verdict == "regression" and outcome.failed
    # within a wide margin: the drop of 0.5 is not shown to exceed 0.6, nor is a drop beyond 0.6 ruled out
    wide = compare.gate(changes, [Rule("gsm8k/exact_match__strict-match", 0.6)], "v1", "inconclusive")
    assert [j.verdict for j in wide.judged] == ["inconclusive"] and wide.failed
    assert not compare.gate(changes, [Rule("gsm8k/exact_match__strict-match", 0.6)], "v1", "regression").failed
    # 40 unchanged documents rule out a drop beyond 0.2, not one beyond 0.01
    both = compare.gate(changes, [Rule("exact_match", 0.2)], "v1", "inconclusive")
    assert [j.verdict for j in both.judged] == ["regression", "pass"]
    tight = compare.gate([changes[1]], [Rule("exact_match", 0.01)], "v1", "inconclusive")
    assert [j.verdict for j in tight.judged] == ["inconclusive"] and "80% power" in tight.judged[0].why
    only = compare.gate([changes[1]], [Rule("exact_match", 0.2)], "v1", "inconclusive")
    assert only.verdict == "pass" and not only.failed and only.reasons() == []
    # two rules name one metric: the strictest decides, in whichever order they are written
    for rules in ([Rule("*", 0.6), Rule("exact_match__strict-match", 0.01)],
                  [Rule("exact_match__strict-match", 0.01), Rule("*", 0.6)]):
        judged = compare.gate([changes[0]], rules, "v1", "inconclusive").judged
        assert [(j.verdict, j.rule.max_drop) for j in judged] == [("regression", 0.01)]
    outcome = compare.gate(changes, [Rule("acc", 0.0)], "v1", "regression")  # a metric no benchmark has
    assert outcome.reasons() == ["the gate could not look: no metric the rules name (acc) is in the results"]
    assert outcome.failed


def test_a_rule_names_a_metric_inside_a_group_and_a_lower_is_better_rise_is_a_regression(tmp_path):
    base = evaluation(tmp_path, "v1", {"none": [0.0] * 40}, metric="ter", filters=("none",))
    worse = evaluation(tmp_path, "v2", {"none": [1.0] * 20 + [0.0] * 20}, metric="ter", filters=("none",))
    for run in (base, worse):  # lm-eval says ter improves downwards
        (results,) = (tmp_path / "benchmarks").glob(f"gsm8k-{run.name}/model/results_*.json")
        results.write_text(json.dumps({"group_subtasks": {"gsm8k": []},
                                       "higher_is_better": {"gsm8k": {"ter": False}}}))
    (change,) = compare.compare(compare.load(base), compare.load(worse))
    assert change.higher_is_better is False and change.difference == pytest.approx(0.5)
    outcome = compare.gate([change], [Rule("ter", 0.01)], "v1", "regression")
    assert outcome.verdict == "regression" and "may rise at most 0.01" in outcome.reasons()[0]
    (better,) = compare.compare(compare.load(worse), compare.load(base))  # ter 0.5 → 0: better, not worse
    assert compare.gate([better], [Rule("ter", 0.01)], "v1", "inconclusive").verdict == "pass"
    named = compare.Change("truthfulqa", "truthfulqa_mc2/acc", 0.4, 0.4)
    assert Rule("acc").applies(named) and Rule("truthfulqa/acc").applies(named)
    assert not Rule("acc_norm").applies(named) and not Rule("arc/acc").applies(named)


def test_holm_decides_over_the_gated_metrics_or_over_the_primary_ones_alone(tmp_path):
    """Two metrics whose drops are each just significant on their own (4 of 200 documents lost: one-sided
    p = Φ(−2) = 0.023): Holm over both doubles the smaller p, so neither is shown; beside a certain drop the
    step-down keeps the small one; marking a rule primary leaves the other out of the family."""
    def drop(name, kept):
        return evaluation(tmp_path, name, {"strict-match": [1.0] * kept + [0.0] * (200 - kept)})
    base, small, large = drop("b", 40), drop("s", 36), drop("l", 10)
    a_change = compare.compare(compare.load(base), compare.load(small))[0]
    b_change = compare.Change(**{**a_change.__dict__, "benchmark": "arc"})
    l_change = compare.compare(compare.load(base), compare.load(large))[0]
    p = a_change.tested.p_below(0.0)
    assert p == pytest.approx(0.02275, abs=1e-5)
    alone = compare.gate([a_change], [Rule("*", 0.0)], "b", "regression")
    assert alone.judged[0].verdict == "regression" and alone.judged[0].p_regression == pytest.approx(p)
    family = compare.gate([a_change, b_change], [Rule("*", 0.0)], "b", "regression")
    assert [j.p_regression for j in family.judged] == pytest.approx([2 * p, 2 * p])
    assert [j.verdict for j in family.judged] == ["inconclusive", "inconclusive"] and family.verdict == "inconclusive"
    step_down = compare.gate([a_change, l_change], [Rule("*", 0.0)], "b", "regression")
    assert [j.p_regression for j in step_down.judged] == pytest.approx([p, 2 * l_change.tested.p_below(0.0)])
    assert [j.verdict for j in step_down.judged] == ["regression", "regression"]
    primary = compare.gate([a_change, b_change], [Rule("arc/exact_match", 0.0, primary=True), Rule("*", 0.0)],
                           "b", "regression")
    assert [(j.verdict, j.deciding) for j in primary.judged] == [("regression", False), ("regression", True)]
    assert "the primary rules' metrics" in primary.markdown() and "the 1 deciding metric" in primary.markdown()


def test_eval_compare_prints_the_table_and_refuses_what_is_not_an_evaluation(tmp_path):
    a = evaluation(tmp_path, "v1", {"strict-match": [0.0] * 40})
    b = evaluation(tmp_path, "v2", {"strict-match": [1.0] * 16 + [0.0] * 24})
    r = nemotron("nano3", "eval", "compare", str(a), str(b))
    assert r.returncode == 0, r.stderr
    assert "gsm8k      exact_match__strict-match  0.0000  0.4000  +0.4000 [" in r.stdout
    assert "1 metrics: 1 significant at 5%, 0 not comparable" in r.stdout
    # issue 26: with rules, the gate's verdict per metric, and exit 1 when it would fail a run
    down = nemotron("nano3", "eval", "compare", str(b), str(a), "--rule", "exact_match=0.01")
    assert down.returncode == 1, down.stderr
    assert "regression    gsm8k exact_match__strict-match (rule exact_match ≤ 0.01; p=" in down.stdout
    assert "gate against v2: regression (would fail the run)" in down.stdout
    up = nemotron("nano3", "eval", "compare", str(a), str(b), "--rule=*=0.01")
    assert up.returncode == 0 and "gate against v1: pass" in up.stdout, up.stdout
    bad = nemotron("nano3", "eval", "compare", str(a), str(b), "--rule", "acc")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--rule 'acc': give METRIC=MAX_DROP" in bad.stderr
    bad = nemotron("nano3", "eval", "compare", str(a), str(tmp_path / "nope"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr
    with pytest.raises(ConfigError, match="holds 2 evaluations"):
        compare.results_folder(str(tmp_path))


def test_a_gate_without_rules_or_with_a_negative_margin_is_refused_in_one_line():
    for gate, says in [("{baseline: previous, rules: []}", "evaluation.gate.rules"),
                       ("{rules: [{metric: acc, max_drop: -0.1}]}", "evaluation.gate.rules.0.max_drop")]:
        r = nemotron("nano3", "eval", "-c", "local", "--dry-run", f"evaluation.gate={gate}")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    ok = nemotron("nano3", "eval", "-c", "local", "--dry-run", "--count", "-t", "gsm8k", "-t", "arc_challenge",
                  "evaluation.nemo_evaluator_config.config.params.limit_samples=20",
                  "evaluation.gate={rules: [{metric: '*', max_drop: 0.01}, "
                  "{metric: arc_challenge/acc, max_drop: 0.7}]}")
    assert ok.returncode == 0 and "baseline: previous" in ok.stdout
    # issue 26: what 20 documents can detect, and a warning for the margin below it (not for the wide one)
    assert "gsm8k: '20 documents: the smallest drop shown with 80% power is 0.6265 (worst case" in ok.stdout
    warnings = [line for line in ok.stdout.splitlines() if line.startswith("# warning: ")]
    assert [w.split(":")[1].strip() for w in warnings] == ["rule * (max_drop 0.01) on gsm8k",
                                                          "rule * (max_drop 0.01) on arc_challenge"], warnings
    assert "only drops beyond 0.6265, not one beyond 0.01" in warnings[0]


def test_a_gate_whose_look_up_failed_does_not_pass(tmp_path):
    """A look-up of the previous evaluation that raised (the Prefect API down, a bad answer) is no "first
    evaluation of the series": the gate cannot look, so the run fails as inconclusive."""
    from types import SimpleNamespace

    from nemotron.records.baseline import judge

    gate = SimpleNamespace(baseline="previous", fail_on="regression",
                           rules=[SimpleNamespace(metric="*", max_drop=0.01, primary=False)])
    warned = []
    failed = "the look-up of the previous evaluation failed: 503 Service Unavailable"
    outcome = judge(gate, None, None, None, tmp_path, lambda *a: warned.append(a), failed)
    assert outcome.reasons() == [compare.CANNOT_LOOK + failed] and outcome.verdict == "inconclusive"
    assert outcome.failed and outcome.baseline == "the previous evaluation"
    first = judge(gate, None, None, None, tmp_path, lambda *a: warned.append(a))
    assert first.verdict == "pass" and not first.failed and "no previous evaluation" in first.markdown()
    assert warned and "passed" in warned[-1][0]  # the first evaluation of a series: passes, with a warning
    elsewhere = SimpleNamespace(model="rl:v1", run_dir=None)  # found, but its results are not on this machine
    outcome = judge(gate, elsewhere, None, None, tmp_path, lambda *a: None)
    assert outcome.reasons()[0].startswith(compare.CANNOT_LOOK) and outcome.failed


def test_results_served_another_way_are_not_comparable_and_the_comparison_names_what_differs(tmp_path):
    """Issue 26: another dtype or vLLM is another model; a record written before the serving record was kept is
    comparable with none of today's."""
    a = evaluation(tmp_path, "a", {"strict-match": [1.0] * 10})
    b = evaluation(tmp_path, "b", {"strict-match": [1.0] * 10},
                   serving={**SERVING, "vllm": "0.33.0", "dtype": "bfloat16"})
    old = evaluation(tmp_path, "old", {"strict-match": [1.0] * 10}, serving=None)
    (change,) = compare.compare(compare.load(a), compare.load(b))
    assert not change.comparable and change.differs == ("dtype float32 → bfloat16", "vllm 0.32.0 → 0.33.0")
    (change,) = compare.compare(compare.load(old), compare.load(a))
    assert not change.comparable and "engine unknown → vllm" in change.differs


def test_an_engine_version_nobody_read_is_comparable_with_nothing_and_a_reported_one_is_read(tmp_path):
    """Issue 26: `unknown` on both sides is not the same engine; the version the server reported once up (the
    manifest's server record) stands for an image's or a PATH's engine."""
    path = {**SERVING, "vllm": "unknown (the server node's PATH)"}
    a = evaluation(tmp_path, "a", {"strict-match": [1.0] * 10}, serving=path)
    b = evaluation(tmp_path, "b", {"strict-match": [1.0] * 10}, serving=path)
    (change,) = compare.compare(compare.load(a), compare.load(b))
    assert not change.comparable
    assert change.differs == ("vllm unknown (the server node's PATH) → unknown (the server node's PATH)",)
    for run, version in ((a, "0.33.0"), (b, "0.33.0")):
        manifest = json.loads((run / "manifest.json").read_text())
        (run / "manifest.json").write_text(json.dumps({**manifest, "server": {"engine_version": version}}))
    (change,) = compare.compare(compare.load(a), compare.load(b))
    assert change.comparable
    (run / "manifest.json").write_text(json.dumps({**manifest, "server": {"engine_version": "0.34.0"}}))
    (change,) = compare.compare(compare.load(a), compare.load(b))
    assert change.differs == ("vllm 0.33.0 → 0.34.0",)
    # a pinned version stands: the managed venv's 0.32.0 is not overwritten by what a server says
    c = evaluation(tmp_path, "c", {"strict-match": [1.0] * 10})
    manifest = json.loads((c / "manifest.json").read_text())
    (c / "manifest.json").write_text(json.dumps({**manifest, "server": {"engine_version": "0.32.0+cpu"}}))
    assert compare.load(c).benchmarks["gsm8k"].harness["vllm"] == "0.32.0"


def test_a_harness_that_writes_no_per_sample_records_is_compared_but_not_tested(tmp_path):
    """bfcl and MT-Bench write a score per run, not per document: two runs of one are comparable (same settings) and
    shown side by side, and the row says why no test was made instead of passing for 'no significant change'."""
    a = evaluation(tmp_path, "a", {"strict-match": [1.0, 0.0, 1.0]}, limit=3)
    b = evaluation(tmp_path, "b", {"strict-match": [1.0, 1.0, 1.0]}, limit=3)
    for run in (a, b):  # as a harness without per-sample records leaves its folder
        for path in (tmp_path / "benchmarks").glob(f"gsm8k-{run.name}/model/samples_*.jsonl"):
            path.unlink()
    (change,) = compare.compare(compare.load(a), compare.load(b))
    assert change.comparable and change.untestable == "no per-sample records" and change.p is None
    assert change.before == pytest.approx(2 / 3) and change.after == 1.0
    assert change.describe() == "not testable: no per-sample records"
    outcome = compare.gate([change], [compare.Rule("exact_match", 0.05)], "a", "regression")
    assert outcome.failed and "not testable: no per-sample records" in outcome.cannot[0]  # the gate cannot look
