"""Compare two evaluations benchmark by benchmark: only like for like, paired by document, with a test.

Two results of a benchmark are comparable when the same task ran with the same harness params (limit,
few-shot, generation settings, task config; not how requests were sent) under the same harness versions and
was served the same way (engine, its version, dtype, quantization, ...: engines.served); otherwise the
comparison names what differs. Comparable results are paired on the documents both evaluated (lm-eval's
per-sample records: same task, document and prompt) and the difference is tested: an exact McNemar test for 0/1
metrics, a seeded paired bootstrap for continuous ones. The interval is the bootstrap's 95% percentile
interval in both cases.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from nemotron import runs
from nemotron.benchmarks import TRANSPORT_PARAMS
from nemotron.errors import ConfigError
from nemotron.results import SuiteResult, lm_eval_results, read_json, read_summary, top_level

ALPHA = 0.05
RESAMPLES = 10_000
SEED = 20261201
RUN_CONFIG = "nemotron_run_config.yml"
# params that name where things are on one machine, not what is asked: the tokenizer is the model's own
_PLACE_PARAMS = {"extra.tokenizer"}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of an evaluation, as it ran: what was asked (task, params, harness) and where its samples are."""

    name: str
    task: str
    params: dict[str, Any]  # flattened (extra.num_fewshot), transport params left out
    harness: dict[str, str]
    output_dir: Path
    scores: dict[str, float]  # metric → value


@dataclass(frozen=True)
class Evaluation:
    """A results folder (`<output_dir>/<model>/<stamp>-<run>`) read back for comparing."""

    label: str  # the model version it evaluated
    run_dir: Path
    benchmarks: dict[str, Benchmark]


@dataclass(frozen=True)
class Change:
    """One metric of one benchmark, before → after."""

    benchmark: str
    metric: str
    before: float | None
    after: float | None
    differs: tuple[str, ...] = ()  # why not comparable: "limit_samples 3 → 10"
    paired: int = 0  # documents both evaluated
    difference: float | None = None  # after − before, on the paired documents
    low: float | None = None  # 95% interval of the difference
    high: float | None = None
    p: float | None = None
    test: str = ""  # McNemar (exact) | paired bootstrap

    @property
    def comparable(self) -> bool:
        return not self.differs

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA

    def describe(self) -> str:
        """`+0.1000 [+0.0200, +0.1800] p=0.004 significant`, or `not comparable: limit_samples 3 → 10`."""
        if self.differs:
            return "not comparable: " + "; ".join(self.differs)
        if self.difference is None:
            return "new" if self.before is None else "no paired samples"
        mark = " significant" if self.significant else ""
        return f"{self.difference:+.4f} [{self.low:+.4f}, {self.high:+.4f}] p={_p(self.p)}{mark}"


    def cell(self) -> str:
        """The summary artifact's change cell: the difference in bold when significant."""
        if self.differs or self.difference is None:
            return self.describe()
        diff = f"**{self.difference:+.4f}**" if self.significant else f"{self.difference:+.4f}"
        return f"{diff} [{self.low:+.4f}, {self.high:+.4f}] p={_p(self.p)} (n={self.paired})"

    def record(self) -> dict[str, Any]:
        """For the manifest and W&B: the figures, and what they mean."""
        return {"benchmark": self.benchmark, "metric": self.metric, "before": self.before, "after": self.after,
                "comparable": self.comparable, "differs": list(self.differs), "paired": self.paired,
                "difference": self.difference, "low": self.low, "high": self.high, "p": self.p, "test": self.test,
                "significant": self.significant}


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


# ---- reading an evaluation ----

def load(run_dir: Path, label: str | None = None) -> Evaluation:
    """An evaluation from its results folder: results.json for the scores, manifest.json for the harness
    versions and the serving record, each benchmark folder's run config for its task and params. Raises ConfigError."""
    run_dir = Path(run_dir)
    if not (run_dir / "results.json").is_file():
        raise ConfigError(f"{run_dir} is not an evaluation's results folder (no results.json in it)")
    suite: SuiteResult = read_summary(run_dir / "results.json")
    manifest = read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").is_file() else {}
    # what asked and scored (harness versions) and what served (engine, version, dtype, quantization, ...): a
    # manifest written before the serving record was kept has none, so it is comparable with none of today's
    harness = {**(manifest.get("harness") or {}), **(manifest.get("serving") or {"engine": None})}
    benchmarks = {}
    for r in suite.results:
        if not r.ok:
            continue
        out = Path(r.output_dir)
        config = _run_config(out)
        params = {k: v for k, v in _flat(config.get("params") or {}).items()
                  if k not in TRANSPORT_PARAMS and k not in _PLACE_PARAMS}
        benchmarks[r.benchmark] = Benchmark(r.benchmark, config.get("type", ""), params, harness, out,
                                            {s.metric: s.value for s in r.scores})
    model = (manifest.get("model") or {})
    return Evaluation(label or model.get("resolved") or model.get("ref") or suite.model, run_dir, benchmarks)


def _run_config(out: Path) -> dict[str, Any]:
    try:
        return (yaml.safe_load((out / RUN_CONFIG).read_text()) or {}).get("config") or {}
    except OSError:
        return {}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(a: Benchmark, b: Benchmark) -> tuple[str, ...]:
    """What makes two results of a benchmark incomparable, as `name before → after`."""
    out = []
    if a.task != b.task:
        out.append(f"task {a.task} → {b.task}")
    for k in sorted(set(a.params) | set(b.params)):
        if a.params.get(k) != b.params.get(k):
            out.append(f"{k} {_shown(a.params.get(k))} → {_shown(b.params.get(k))}")
    for k in sorted(set(a.harness) | set(b.harness)):
        if a.harness.get(k) != b.harness.get(k):
            out.append(f"{k} {a.harness.get(k) or 'unknown'} → {b.harness.get(k) or 'unknown'}")
    return tuple(out)


def _shown(v: Any) -> str:
    return "unset" if v is None else str(v)


def samples(bench: Benchmark, metric: str) -> dict[tuple, float]:
    """Each document's outcome for one metric (as results.yml names it: `acc`, `exact_match__strict-match`,
    `truthfulqa_mc1/acc`), keyed by task, document and prompt; pooled over a group's subtasks."""
    entry, _, name = metric.rpartition("/")
    summary, stamp = lm_eval_results(bench.output_dir)
    groups = summary.get("group_subtasks") or {}
    entries = [entry] if entry else top_level(list(groups) or list(summary.get("results", {})), groups)
    leaves = [leaf for e in entries for leaf in _leaves(e, groups)]
    out: dict[tuple, float] = {}
    for leaf in leaves:
        for path in glob.glob(str(bench.output_dir / "*" / f"samples_{glob.escape(leaf)}_{stamp}.jsonl")):
            with open(path) as f:
                for line in f:
                    s = json.loads(line)
                    label_filter = s.get("filter", "none")
                    for m in s.get("metrics") or []:
                        label = m if label_filter == "none" else f"{m}__{label_filter}"
                        if label == name and isinstance(s.get(m), int | float):
                            out[(leaf, s["doc_id"], s.get("doc_hash"), s.get("prompt_hash"))] = float(s[m])
    return out


def _leaves(task: str, groups: dict[str, list[str]]) -> Iterator[str]:
    if groups.get(task):
        for child in groups[task]:
            yield from _leaves(child, groups)
    else:
        yield task


# ---- the tests ----

def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: b, c are the discordant pairs (right before only, right after only);
    under no change each is Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    log_half = n * math.log(0.5)
    tail = sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half)
               for i in range(k + 1))
    return min(1.0, 2.0 * tail)


def bootstrap(diffs: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float, float]:
    """Paired bootstrap of the mean difference: its 95% percentile interval and a two-sided p-value (twice the
    share of resampled means on the far side of zero)."""
    rng = np.random.default_rng(seed)
    n = len(diffs)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(n, 1))  # resamples per batch: bounded memory for 40,000-document tasks
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start:start + size] = diffs[rng.integers(0, n, size=(size, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    if np.all(diffs == 0):
        return 0.0, 0.0, 1.0
    p = min(1.0, 2.0 * min(np.mean(means <= 0), np.mean(means >= 0)))
    return float(low), float(high), float(max(p, 1.0 / resamples) if p == 0 else p)


def test(before: dict[tuple, float], after: dict[tuple, float], resamples: int = RESAMPLES
         ) -> tuple[int, float | None, float | None, float | None, float | None, str]:
    """Pair the documents both evaluated and test the difference: (paired, difference, low, high, p, test)."""
    keys = sorted(set(before) & set(after), key=repr)
    if not keys:
        return 0, None, None, None, None, ""
    a = np.array([before[k] for k in keys])
    b = np.array([after[k] for k in keys])
    low, high, p = bootstrap(b - a, resamples)
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        p, name = mcnemar(int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))), "McNemar (exact)"
    else:
        name = "paired bootstrap"
    return len(keys), float(np.mean(b - a)), low, high, p, name


def compare(before: Evaluation, after: Evaluation, resamples: int = RESAMPLES) -> list[Change]:
    """Every metric of `after` against `before`: not comparable (and why), or the paired test."""
    changes = []
    for name, b in after.benchmarks.items():
        a = before.benchmarks.get(name)
        for metric, value in b.scores.items():
            if a is None or metric not in a.scores:
                changes.append(Change(name, metric, None, value))
                continue
            differs = differences(a, b)
            if differs:
                changes.append(Change(name, metric, a.scores[metric], value, differs))
                continue
            paired, diff, low, high, p, how = test(samples(a, metric), samples(b, metric), resamples)
            changes.append(Change(name, metric, a.scores[metric], value, (), paired, diff, low, high, p, how))
    return changes


# ---- the regression gate ----

@dataclass(frozen=True)
class Rule:
    """Fail when `metric` (a metric name for every benchmark, or `benchmark/metric`; `*`: any) drops
    significantly by more than `max_drop`."""

    metric: str
    max_drop: float = 0.0

    def applies(self, change: Change) -> bool:
        return self.metric in ("*", change.metric, f"{change.benchmark}/{change.metric}")

    def tripped(self, change: Change) -> bool:
        return (self.applies(change) and change.comparable and change.significant
                and change.difference is not None and change.difference < -self.max_drop)


def regressions(changes: list[Change], rules: list[Rule]) -> list[str]:
    """What trips the gate, one line each. A gate that cannot look does not pass: when no metric the rules name
    is in both evaluations, or none of those could be tested against the baseline (other settings or harness, no
    paired samples), that trips it, with what stood in the way."""
    tripped = [f"{c.benchmark} {c.metric} {c.before:.4f} → {c.after:.4f}: {c.describe()} (rule: {r.metric} may "
               f"drop at most {r.max_drop})" for c in changes for r in rules if r.tripped(c)]
    gated = [c for c in changes if any(r.applies(c) for r in rules)]
    if not gated:
        tripped.append(f"{CANNOT_LOOK}no metric the rules name ({', '.join(r.metric for r in rules)}) is in the "
                       "results")
    elif not any(c.comparable and c.difference is not None for c in gated):
        why = sorted({c.describe() for c in gated})
        tripped.append(f"{CANNOT_LOOK}nothing the rules gate could be compared with the baseline "
                       f"({'; '.join(why)[:400]})")
    return tripped[:50]


CANNOT_LOOK = "the gate could not look: "  # what trips the gate without a measured drop


def verdict(tripped: list[str]) -> str:
    """`pass`, `regression` (a drop was measured), or `inconclusive` (the gate could not look, so it did not pass)."""
    if not tripped:
        return "pass"
    return "inconclusive" if all(t.startswith(CANNOT_LOOK) for t in tripped) else "regression"


# ---- output ----

def gate_markdown(baseline: str, tripped: list[str], gated: bool) -> str:
    """The summary's last words on the regression gate, when there is one."""
    if not gated:
        return ""
    if not tripped:
        return f"\nRegression gate against {baseline}: passed.\n"
    return (f"\n**Regression gate against {baseline}: tripped ({verdict(tripped)})**\n\n"
            + "".join(f"- {t}\n" for t in tripped))


def render(before: Evaluation, after: Evaluation, changes: list[Change]) -> str:
    """The terminal table of `eval compare`."""
    head = ("benchmark", "metric", "before", "after", "change [95% interval]", "p", "n", "")
    body = []
    for c in changes:
        if c.differs:
            cells = (c.benchmark, c.metric, _v(c.before), _v(c.after), "not comparable: " + "; ".join(c.differs),
                     "", "", "")
        elif c.difference is None:
            cells = (c.benchmark, c.metric, _v(c.before), _v(c.after), c.describe(), "", "", "")
        else:
            cells = (c.benchmark, c.metric, _v(c.before), _v(c.after),
                     f"{c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}]", _p(c.p), str(c.paired),
                     "significant" if c.significant else "")
        body.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths if w).rstrip())
    significant = sum(c.significant for c in changes)
    apart = sum(not c.comparable for c in changes)
    return (f"before: {before.label} ({before.run_dir})\nafter:  {after.label} ({after.run_dir})\n\n"
            + "\n".join(lines)
            + f"\n\n{len(changes)} metrics: {significant} significant at {ALPHA:.0%}, {apart} not comparable. "
              "Tests on the documents both evaluated: exact McNemar for 0/1 metrics, paired bootstrap "
              f"({RESAMPLES:,} resamples) otherwise; intervals from the bootstrap.")


def _v(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def results_folder(ref: str) -> Path:
    """A results folder from what a user typed: the folder itself (or the output folder holding just one), or a
    run this machine ran (flow run id, id prefix or name). Raises ConfigError naming what is valid."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "results.json").is_file():
            return path.resolve()
        inner = sorted(path.glob("*/results.json")) or sorted(path.glob("*/*/results.json"))
        if len(inner) == 1:
            return inner[0].parent.resolve()
        raise ConfigError(f"{ref} holds {len(inner)} evaluations, not one: give a run folder (with results.json)"
                          + (f", e.g. {inner[-1].parent}" if inner else ""))
    try:
        record = runs.find(ref)
    except ConfigError as e:
        raise ConfigError(f"no evaluation {ref!r}: give a results folder (with results.json) or a run; {e}") from None
    found = Path(record["run_dir"]) if record.get("run_dir") else None
    if found is None or not (found / "results.json").is_file():
        raise ConfigError(f"run {ref!r} ({record['flow_run_id']}) has no results folder on this machine "
                          f"({found or 'none recorded'}): it failed early, or ran elsewhere")
    return found
