"""Comparisons: like for like, paired tests against known values, the regression rules, `eval compare`."""

import json

import numpy as np
import pytest
import yaml
from scipy.stats import binomtest

from nemotron import compare
from nemotron.compare import Rule
from nemotron.errors import ConfigError
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
    (bench / "model" / f"results_{STAMP}.json").write_text(json.dumps({"group_subtasks": {task: []}}))
    with open(bench / "model" / f"samples_{task}_{STAMP}.jsonl", "w") as f:
        for flt in filters:
            for i, value in enumerate(outcomes[flt]):
                f.write(json.dumps({"doc_id": i, "doc_hash": f"d{i}", "prompt_hash": f"p{i}", "filter": flt,
                                    "metrics": [metric], metric: value}) + "\n")
    scores = [{"benchmark": task, "metric": f"{metric}__{flt}", "value": float(np.mean(outcomes[flt])),
               "stderr": None, "samples": len(outcomes[flt])} for flt in filters]
    (run / "results.json").write_text(json.dumps({"schema_version": 1, "model": name, "failed": [], "results": [
        {"benchmark": task, "status": "completed", "output_dir": str(bench), "seconds": 1.0, "scores": scores}]}))
    (run / "manifest.json").write_text(json.dumps({"harness": harness or HARNESS, "model": {"ref": name},
                                                        **({"serving": serving} if serving else {})}))
    return run


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_pairs():
    assert compare.mcnemar(0, 5) == pytest.approx(2 / 32)  # by hand: both tails of Binomial(5, 1/2) at 0
    assert compare.mcnemar(1, 9) == pytest.approx(22 / 1024)  # 2 × (1 + 10) / 2^10
    assert compare.mcnemar(4, 4) == 1.0 and compare.mcnemar(0, 0) == 1.0
    for b, c in [(3, 11), (20, 35), (480, 560), (1500, 1380)]:
        assert compare.mcnemar(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)


def test_the_paired_bootstrap_is_seeded_and_finds_a_shift():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, 400)
    assert compare.bootstrap(noise) == compare.bootstrap(noise)  # seeded: the same figures every time
    low, high, p = compare.bootstrap(noise)
    assert low < 0 < high and p > 0.05
    low, high, p = compare.bootstrap(noise + 0.5)
    assert 0.3 < low < 0.5 < high < 0.7 and p < 0.001
    assert compare.bootstrap(np.zeros(50)) == (0.0, 0.0, 1.0)


def test_binary_metrics_get_mcnemar_continuous_ones_the_bootstrap():
    before = {(i,): 0.0 for i in range(40)}
    after = {(i,): 1.0 if i < 12 else 0.0 for i in range(40)}
    n, diff, low, high, p, how = compare.test(before, after)
    assert (n, how) == (40, "McNemar (exact)") and diff == pytest.approx(0.3)
    assert p == pytest.approx(binomtest(0, 12, 0.5).pvalue) and low > 0
    n, diff, *_, how = compare.test({(i,): 0.2 for i in range(10)}, {(i,): 0.25 for i in range(10)})
    assert how == "paired bootstrap" and diff == pytest.approx(0.05)
    assert compare.test({(1,): 1.0}, {(2,): 1.0})[0] == 0  # no document in common: nothing to pair


def test_a_real_change_is_significant_with_its_sign_and_a_small_one_is_not(tmp_path):
    base = evaluation(tmp_path, "v1", {"strict-match": [0.0] * 40})
    better = evaluation(tmp_path, "v2", {"strict-match": [1.0] * 16 + [0.0] * 24}, parallelism=7,
                        tokenizer="/models/b")  # how it was sent and where the tokenizer was: still comparable
    slightly = evaluation(tmp_path, "v3", {"strict-match": [1.0] * 2 + [0.0] * 38})
    (up,) = compare.compare(compare.load(base), compare.load(better))
    assert up.comparable and up.paired == 40 and up.difference == pytest.approx(0.4)
    assert up.significant and up.p == pytest.approx(2 / 2 ** 16) and up.low > 0
    assert up.describe().startswith("+0.4000 [") and up.describe().endswith("significant")
    (down,) = compare.compare(compare.load(better), compare.load(base))
    assert down.significant and down.difference == pytest.approx(-0.4) and down.high < 0
    (small,) = compare.compare(compare.load(base), compare.load(slightly))
    assert small.comparable and not small.significant and small.p == pytest.approx(0.5)


def test_different_settings_or_harness_are_not_comparable_and_say_what_differs(tmp_path):
    a = evaluation(tmp_path, "a", {"strict-match": [0.0] * 3}, limit=3)
    b = evaluation(tmp_path, "b", {"strict-match": [1.0] * 10}, limit=10)
    c = evaluation(tmp_path, "c", {"strict-match": [0.0] * 3}, limit=3, harness={**HARNESS, "nvidia-lm-eval": "26.4"})
    (x,) = compare.compare(compare.load(a), compare.load(b))
    assert not x.comparable and x.differs == ("limit_samples 3 → 10",) and x.p is None
    assert x.describe() == "not comparable: limit_samples 3 → 10"
    (y,) = compare.compare(compare.load(a), compare.load(c))
    assert y.differs == ("nvidia-lm-eval 26.3 → 26.4",)
    # a gate that can compare nothing does not pass: it trips, saying why (not on the drop itself)
    (why,) = compare.regressions([compare.compare(compare.load(b), compare.load(a))[0]], [Rule("*", 0.0)])
    assert why.startswith("the gate could not look: nothing the rules gate could be compared with the baseline "
                          "(not comparable: limit_samples 10 → 3)"), why
    assert compare.verdict([why]) == "inconclusive" and compare.verdict([]) == "pass"


def test_rules_fire_on_a_significant_drop_beyond_their_margin_only(tmp_path):
    base = evaluation(tmp_path, "v1", {"strict-match": [1.0] * 20 + [0.0] * 20, "flexible-extract": [1.0] * 40},
                      filters=("strict-match", "flexible-extract"))
    worse = evaluation(tmp_path, "v2", {"strict-match": [0.0] * 40, "flexible-extract": [1.0] * 40},
                       filters=("strict-match", "flexible-extract"))
    changes = compare.compare(compare.load(base), compare.load(worse))
    assert [c.metric for c in changes] == ["exact_match__strict-match", "exact_match__flexible-extract"]
    tripped = compare.regressions(changes, [Rule("exact_match__strict-match", 0.01)])
    assert len(tripped) == 1 and tripped[0].startswith("gsm8k exact_match__strict-match 0.5000 → 0.0000: -0.5000")
    assert compare.verdict(tripped) == "regression"
    assert compare.regressions(changes, [Rule("gsm8k/exact_match__strict-match", 0.6)]) == []  # within margin
    (why,) = compare.regressions(changes, [Rule("acc", 0.0)])  # a metric no benchmark has: nothing was looked at
    assert why == "the gate could not look: no metric the rules name (acc) is in the results", why
    assert len(compare.regressions(changes, [Rule("*", 0.0)])) == 1  # flexible-extract did not move


def test_eval_compare_prints_the_table_and_refuses_what_is_not_an_evaluation(tmp_path):
    a = evaluation(tmp_path, "v1", {"strict-match": [0.0] * 40})
    b = evaluation(tmp_path, "v2", {"strict-match": [1.0] * 16 + [0.0] * 24})
    r = nemotron("nano3", "eval", "compare", str(a), str(b))
    assert r.returncode == 0, r.stderr
    assert "gsm8k      exact_match__strict-match  0.0000  0.4000  +0.4000 [" in r.stdout
    assert "1 metrics: 1 significant at 5%, 0 not comparable" in r.stdout
    bad = nemotron("nano3", "eval", "compare", str(a), str(tmp_path / "nope"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr
    with pytest.raises(ConfigError, match="holds 2 evaluations"):
        compare.results_folder(str(tmp_path))


def test_a_gate_without_rules_or_with_a_negative_margin_is_refused_in_one_line():
    for gate, says in [("{baseline: previous, rules: []}", "evaluation.gate.rules"),
                       ("{rules: [{metric: acc, max_drop: -0.1}]}", "evaluation.gate.rules.0.max_drop")]:
        r = nemotron("nano3", "eval", "-c", "local", "--dry-run", f"evaluation.gate={gate}")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    ok = nemotron("nano3", "eval", "-c", "local", "--dry-run", "-t", "gsm8k",
                  "evaluation.gate={rules: [{metric: acc, max_drop: 0.01}]}")
    assert ok.returncode == 0 and "baseline: previous" in ok.stdout


def test_a_gate_whose_look_up_failed_does_not_pass(tmp_path):
    """A look-up of the previous evaluation that raised (the Prefect API down, a bad answer) is no "first
    evaluation of the series": the gate cannot look, so the run fails as inconclusive."""
    from types import SimpleNamespace

    from flows.eval import judge

    gate = SimpleNamespace(baseline="previous", rules=[SimpleNamespace(metric="*", max_drop=0.01)])
    warned = []
    failed = f"{compare.CANNOT_LOOK}the look-up of the previous evaluation failed: 503 Service Unavailable"
    tripped, baseline = judge(gate, None, None, None, tmp_path, lambda *a: warned.append(a), failed)
    assert tripped == [failed] and compare.verdict(tripped) == "inconclusive" and baseline == "the previous evaluation"
    assert judge(gate, None, None, None, tmp_path, lambda *a: warned.append(a)) == ([], "no previous evaluation")
    assert warned and "passed" in warned[-1][0]  # the first evaluation of a series: passes, with a warning
    elsewhere = SimpleNamespace(model="rl:v1", run_dir=None)  # found, but its results are not on this machine
    (why,), _ = judge(gate, elsewhere, None, None, tmp_path, lambda *a: None)
    assert why.startswith(compare.CANNOT_LOOK) and compare.verdict([why]) == "inconclusive"


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
