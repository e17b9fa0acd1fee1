"""Compare two evaluations benchmark by benchmark: only like for like, paired by document, with a test.

Two results of a benchmark are comparable when the same task ran with the same harness params (limit,
few-shot, generation settings, task config; not how requests were sent) under the same harness versions and
was served the same way (engine, its version, dtype, quantization, ...: engines.served); otherwise the
comparison names what differs. Comparable results are paired on the documents both evaluated (lm-eval's
per-sample records: same task, document and prompt) and the difference is tested (nemotron.records.stats: one test
gives the interval and the p-values). The regression gate reads each gated metric's test against its rule's
margin, in the direction the metric improves, with Holm's correction over the metrics that decide.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nemotron.benchmarks import chat
from nemotron.benchmarks.runner import TRANSPORT_PARAMS
from nemotron.errors import ConfigError
from nemotron.records import runs, stats
from nemotron.records.results import SuiteResult, lm_eval_results, read_json, read_summary, top_level
from nemotron.serving.gate import TOKEN_VAR

ALPHA = 1 - stats.LEVEL  # two-sided, for "significant"; each gate claim is one-sided at ALPHA / 2
RUN_CONFIG = "nemotron_run_config.yml"
# params that name where things are on one machine, not what is asked: the tokenizer is the model's own
_PLACE_PARAMS = {"extra.tokenizer", "extra.judge.api_key_name"}  # where, not what: a copy, a variable's name


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
    p: float | None = None  # two-sided, for no difference
    test: str = ""  # score (Tango) | paired t
    higher_is_better: bool | None = True  # None: lm-eval does not say
    untestable: str = ""  # why paired documents could not be tested
    tested: stats.Paired | None = field(default=None, compare=False, repr=False)

    @property
    def comparable(self) -> bool:
        return not self.differs

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA

    @property
    def detectable(self) -> float | None:
        """The smallest change these documents show with 80% power (worst case at the baseline's score)."""
        return stats.detectable(self.paired, self.before if self.test != "paired t" else None) \
            if self.paired else None

    def describe(self) -> str:
        """`+0.1000 [+0.0200, +0.1800] p=0.004 significant`, `not comparable: limit_samples 3 → 10`, or `not
        testable: no per-sample records`."""
        if self.differs:
            return "not comparable: " + "; ".join(self.differs)
        if self.difference is None:
            if self.untestable:
                return f"not testable: {self.untestable}"
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
                "significant": self.significant, "higher_is_better": self.higher_is_better,
                "detectable": self.detectable, "untestable": self.untestable}


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
    engine, reported = harness.get("engine"), (manifest.get("server") or {}).get("engine_version")
    if engine and reported and not _is_version(harness.get(engine)):  # an image's or a PATH's engine, measured
        harness[engine] = reported
    judge_params = ((((manifest.get("config") or {}).get("evaluation") or {}).get("judge") or {})
                    .get("add_params") or {})
    benchmarks = {}
    for r in suite.results:
        if not r.ok:
            continue
        out = Path(r.output_dir)
        run_config = _run_config(out)
        config = run_config.get("config") or {}
        controls, args = chat.recorded(run_config)
        given = _flat(config.get("params") or {})
        params = {k: v for k, v in given.items()
                  if k not in TRANSPORT_PARAMS and k not in _PLACE_PARAMS and k != "extra.args"}
        # a system prompt changes scores: the chat controls are held side by side as the config names them
        params.update({**({"extra.args": args} if args else {}), **_flat({"chat": controls})})
        # judged by the run's own served model, through its gate (a new port each run), with what its requests
        # were sent with
        if given.get("extra.judge.api_key_name") == TOKEN_VAR:
            params["extra.judge.url"] = "the served model"
            params.update(_flat({"judge.add_params": judge_params}))
        benchmarks[r.benchmark] = Benchmark(r.benchmark, config.get("type", ""), params, harness, out,
                                            {s.metric: s.value for s in r.scores})
    model = (manifest.get("model") or {})
    return Evaluation(label or model.get("resolved") or model.get("ref") or suite.model, run_dir, benchmarks)


def _run_config(out: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load((out / RUN_CONFIG).read_text()) or {}
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
        # an engine version nobody could read is not the same on both sides for being unknown on both
        if a.harness.get(k) != b.harness.get(k) or str(a.harness.get(k)).startswith("unknown"):
            out.append(f"{k} {a.harness.get(k) or 'unknown'} → {b.harness.get(k) or 'unknown'}")
    return tuple(out)


def _is_version(v: Any) -> bool:
    """`0.32.0`, not `unknown (...)`, `the image's (...)` or `the command's`."""
    return isinstance(v, str) and v[:1].isdigit()


def _shown(v: Any, width: int = 60) -> str:
    """A setting as a difference names it: a long one (a system prompt) cut to `width` characters."""
    shown = "unset" if v is None else repr(v) if isinstance(v, str) and " " in v else str(v)
    return shown if len(shown) <= width else shown[:width - 1] + "…"


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

def higher_is_better(bench: Benchmark, metric: str) -> bool | None:
    """Which way the metric improves, as lm-eval's results say for the task (or every subtask of a group); None
    when they do not say, or say both."""
    entry, _, name = metric.rpartition("/")
    summary, _ = lm_eval_results(bench.output_dir)
    table = summary.get("higher_is_better") or {}
    groups = summary.get("group_subtasks") or {}
    entries = [entry] if entry else top_level(list(groups) or list(summary.get("results", {})), groups)
    base = name.split("__", 1)[0]
    said = {table[t][base] for e in entries for t in (e, *_leaves(e, groups))
            if isinstance(table.get(t), dict) and isinstance(table[t].get(base), bool)}
    return said.pop() if len(said) == 1 else None


def compare(before: Evaluation, after: Evaluation) -> list[Change]:
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
            first, then = samples(a, metric), samples(b, metric)
            keys = sorted(set(first) & set(then), key=repr)
            # a harness that writes no per-sample records (bfcl, mtbench: a score per run) cannot be paired
            tested = ("no per-sample records" if not first or not then
                      else stats.paired([first[k] for k in keys], [then[k] for k in keys]))
            direction = higher_is_better(b, metric)
            if isinstance(tested, str):
                changes.append(Change(name, metric, a.scores[metric], value, paired=len(keys), untestable=tested,
                                      higher_is_better=direction))
                continue
            low, high = tested.interval
            changes.append(Change(name, metric, a.scores[metric], value, (), tested.n, tested.difference, low, high,
                                  tested.p, tested.method, direction, tested=tested))
    return changes


# ---- the regression gate ----

@dataclass(frozen=True)
class Rule:
    """A metric (its name for every benchmark, `benchmark/metric`, or `*`) may not get worse by more than
    `max_drop`; a primary rule's metrics alone decide the gate when any rule is primary."""

    metric: str
    max_drop: float = 0.0
    primary: bool = False

    def applies(self, change: Change) -> bool:
        """`acc` names truthfulqa's `truthfulqa_mc2/acc` too, and `exact_match` each of its filters."""
        short = change.metric.rpartition("/")[2]
        names = {change.metric, short, short.split("__", 1)[0]}
        return self.metric == "*" or self.metric in names or self.metric in {f"{change.benchmark}/{n}" for n in names}


def rules_of(gate_cfg) -> list[Rule]:
    """The rules of an `evaluation.gate` section."""
    return [Rule(r.metric, r.max_drop, r.primary) for r in gate_cfg.rules]


@dataclass(frozen=True)
class Judged:
    """One gated metric's verdict: regression (a worsening beyond the margin shown), pass (one ruled out), or
    inconclusive (neither, or no test), with the Holm-adjusted p of the regression claim."""

    change: Change
    rule: Rule
    verdict: str
    p_regression: float | None = None  # adjusted over the family
    p_pass: float | None = None
    why: str = ""
    deciding: bool = True

    def line(self) -> str:
        c = self.change
        worse = "drop" if c.higher_is_better is not False else "rise"
        head = (f"{c.benchmark} {c.metric} {_v(c.before)} → {_v(c.after)}: {c.describe()} "
                f"(rule: {self.rule.metric} may {worse} at most {self.rule.max_drop}")
        if self.p_regression is not None:
            head += f"; p={_p(self.p_regression)} for a {worse} beyond it, Holm-adjusted"
        return head + ")" + (f": {self.why}" if self.why else "")


def judge(changes: list[Change], rules: list[Rule]) -> tuple[list[Judged], list[str]]:
    """Each gated metric's verdict, and what stops the gate from looking at all (it then fails, whatever
    `fail_on` says): no metric the rules name in the results, or none of them comparable and tested. The
    family is the metrics of the primary rules when there are any, else every gated metric; Holm's correction
    bounds the chance that any of its regressions is noise at ALPHA / 2, and a pass needs every one of them to
    rule its drop out (an intersection-union test: no correction needed)."""
    primary = any(r.primary for r in rules)
    gated: list[tuple[Change, Rule]] = []
    for c in changes:
        matching = [r for r in rules if r.applies(c)]
        if matching:  # the strictest rule that names it decides
            gated.append((c, min(matching, key=lambda r: (not r.primary, r.max_drop))))
    cannot = []
    if not gated:
        cannot.append(f"{CANNOT_LOOK}no metric the rules name ({', '.join(r.metric for r in rules)}) is in the "
                      "results")
    elif not any(c.tested is not None for c, _ in gated):
        why = sorted({c.describe() for c, _ in gated})
        cannot.append(f"{CANNOT_LOOK}nothing the rules gate could be compared with the baseline "
                      f"({'; '.join(why)[:400]})")
    claims = []  # (index, p of the regression claim, p of the pass claim)
    out: list[Judged] = []
    for c, r in gated:
        deciding = r.primary or not primary
        if c.tested is None or c.higher_is_better is None:
            why = ("lm-eval does not say which way this metric improves" if c.tested is not None
                   else c.describe())
            out.append(Judged(c, r, "inconclusive", why=why, deciding=deciding))
            continue
        margin = -r.max_drop if c.higher_is_better else r.max_drop
        worse, better = (c.tested.p_below, c.tested.p_above) if c.higher_is_better else \
            (c.tested.p_above, c.tested.p_below)
        out.append(Judged(c, r, "", deciding=deciding))
        claims.append((len(out) - 1, worse(margin), better(margin)))
    family = [(i, pw, pp) for i, pw, pp in claims if out[i].deciding]
    adjusted = dict(zip([i for i, _, _ in family], stats.holm([pw for _, pw, _ in family]), strict=True))
    for i, pw, pp in claims:
        p_reg = adjusted.get(i, pw)
        verdict = ("regression" if p_reg < stats.ALPHA_ONE_SIDED else
                   "pass" if pp < stats.ALPHA_ONE_SIDED else "inconclusive")
        why = "" if verdict != "inconclusive" else (
            f"the documents can neither show nor rule out a change beyond the margin (the smallest they show with "
            f"80% power: {out[i].change.detectable:.4f})")
        out[i] = Judged(out[i].change, out[i].rule, verdict, p_reg, pp, why, out[i].deciding)
    return out, cannot


CANNOT_LOOK = "the gate could not look: "  # what fails the gate without a measured change


@dataclass(frozen=True)
class GateOutcome:
    """The regression gate's word on a run, against `baseline`: each gated metric's verdict, what kept it from
    looking (`cannot`: it then fails whatever `fail_on` says), and whether the run fails."""

    baseline: str
    judged: tuple[Judged, ...] = ()
    cannot: tuple[str, ...] = ()
    fail_on: str = "inconclusive"
    note: str = ""  # why there was nothing to hold the run against (the first of a series)

    @property
    def verdict(self) -> str:
        """regression when a deciding metric is one, else inconclusive when the gate could not look or a deciding
        metric is inconclusive, else pass."""
        deciding = [j.verdict for j in self.judged if j.deciding]
        if "regression" in deciding:
            return "regression"
        if self.note:
            return "pass"
        return "inconclusive" if self.cannot or "inconclusive" in deciding or not deciding else "pass"

    @property
    def failed(self) -> bool:
        return self.verdict == "regression" or bool(self.cannot) or (
            self.verdict == "inconclusive" and self.fail_on == "inconclusive")

    def reasons(self) -> list[str]:
        """What the gate says against the run, one line each: regressions, then what it could not look at or
        tell."""
        lines = [f"regression: {j.line()}" for j in self.judged if j.verdict == "regression" and j.deciding]
        lines += self.cannot
        if not self.cannot:  # else its line already says why nothing could be told
            lines += [f"inconclusive: {j.line()}" for j in self.judged if j.verdict == "inconclusive" and j.deciding]
        return lines[:50]

    def family(self) -> str:
        """Which metrics the error control covers, for the summary."""
        deciding = [j for j in self.judged if j.deciding]
        which = " (the primary rules' metrics; the others are shown, not deciding)" if any(
            not j.deciding for j in self.judged) else ""
        return (f"Holm's correction over the {len(deciding)} deciding metric(s){which}: the chance that any "
                f"regression reported is noise is at most {stats.ALPHA_ONE_SIDED:.1%}; `pass` needs each of them "
                "to rule out a change beyond its margin (95% interval entirely on the right side of it).")

    def markdown(self) -> str:
        """The summary's last words on the gate."""
        if self.note:
            return f"\nRegression gate: {self.note}: passed.\n"
        head = f"\n**Regression gate against {self.baseline}: {self.verdict}"
        head += (", the run fails**" if self.failed else
                 " (not failing the run: fail_on is regression)**" if self.verdict == "inconclusive" else "**")
        rows = "".join(f"| {j.change.benchmark} | {j.change.metric} | {j.verdict}"
                       f"{'' if j.deciding else ' (not deciding)'} | {j.rule.metric} ≤ {j.rule.max_drop} | "
                       f"{_p(j.p_regression)} | {j.why or j.change.describe()} |\n" for j in self.judged)
        table = ("\n| benchmark | metric | verdict | rule | p (worse beyond the margin, Holm) | |\n"
                 "|---|---|---|---|---|---|\n" + rows) if rows else ""
        return (head + "\n\n" + "".join(f"- {t}\n" for t in self.cannot) + table
                + (f"\n{self.family()}\n" if self.judged else ""))

    def text(self) -> str:
        """For the terminal (`eval compare --rule`): one line per gated metric, then the verdict."""
        lines = [f"{j.verdict:<12}  {j.change.benchmark} {j.change.metric} (rule {j.rule.metric} ≤ {j.rule.max_drop}"
                 f"{'' if j.p_regression is None else f'; p={_p(j.p_regression)} Holm'})"
                 + (f": {j.why}" if j.why else "") for j in self.judged]
        lines += self.cannot
        return "\n".join([*lines, f"gate against {self.baseline}: {self.verdict}"
                           + (" (would fail the run)" if self.failed else ""), self.family() if self.judged else ""]
                          ).rstrip()

    def record(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "verdict": self.verdict, "failed": self.failed, "fail_on": self.fail_on,
                "cannot_look": list(self.cannot), "note": self.note,
                "metrics": [{"benchmark": j.change.benchmark, "metric": j.change.metric, "verdict": j.verdict,
                             "rule": j.rule.metric, "max_drop": j.rule.max_drop, "deciding": j.deciding,
                             "p_regression": j.p_regression, "p_pass": j.p_pass, "why": j.why} for j in self.judged]}


def gate(changes: list[Change], rules: list[Rule], baseline: str, fail_on: str) -> GateOutcome:
    judged, cannot = judge(changes, rules)
    return GateOutcome(baseline, tuple(judged), tuple(cannot), fail_on)


def cannot_look(baseline: str, why: str, fail_on: str) -> GateOutcome:
    """A gate that could not get at its baseline: it fails the run, saying why."""
    return GateOutcome(baseline, cannot=(f"{CANNOT_LOOK}{why}",), fail_on=fail_on)


def detectable_plan(rules: list[Rule], documents: dict[str, int | None], scores: dict[str, float] | None = None
                    ) -> tuple[dict[str, str], list[str]]:
    """Before launching: per gated benchmark, the smallest drop its documents show with 80% power at the gate's
    one-sided 2.5% (at the baseline's score when known, else the worst case), and a warning for each rule whose
    margin is below it (that gate cannot pass the benchmark: it can only say inconclusive, or regression)."""
    lines, warnings = {}, []
    for name, n in documents.items():
        applying = [r for r in rules if r.metric == "*" or "/" not in r.metric or r.metric.startswith(f"{name}/")]
        if not applying:
            continue
        if not n:
            lines[name] = "documents unknown: what the gate can detect is unknown"
            continue
        score = (scores or {}).get(name)
        figure = stats.detectable(n, score)
        at = f"at the baseline's {score:.4f}" if score is not None else "worst case, at a score of 0.5"
        beyond = ": more than a 0/1 score can drop, so no drop can be shown" if figure >= 1 else ""
        lines[name] = f"{n:,} documents: the smallest drop shown with 80% power is {figure:.4f} ({at}){beyond}"
        warnings += [f"rule {r.metric} (max_drop {r.max_drop}) on {name}: {n:,} documents rule out (with 80% "
                     f"power, when nothing changed) only drops beyond {figure:.4f}, not one beyond {r.max_drop}: "
                     "the gate can only say inconclusive or regression there; raise max_drop or evaluate more documents"
                     for r in applying if r.max_drop < figure]
    return lines, warnings


# ---- output ----

def render(before: Evaluation, after: Evaluation, changes: list[Change]) -> str:
    """The terminal table of `eval compare`."""
    head = ("benchmark", "metric", "before", "after", "change [95% interval]", "p", "n", "detectable", "")
    body = []
    for c in changes:
        if c.differs:
            cells = (c.benchmark, c.metric, _v(c.before), _v(c.after), "not comparable: " + "; ".join(c.differs),
                     "", "", "", "")
        elif c.difference is None:
            cells = (c.benchmark, c.metric, _v(c.before), _v(c.after), c.describe(), "", "", "", "")
        else:
            cells = (c.benchmark, c.metric, _v(c.before), _v(c.after),
                     f"{c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}]", _p(c.p), str(c.paired),
                     f"±{c.detectable:.4f}", "significant" if c.significant else "")
        body.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths if w).rstrip())
    significant = sum(c.significant for c in changes)
    apart = sum(not c.comparable for c in changes)
    return (f"before: {before.label} ({before.run_dir})\nafter:  {after.label} ({after.run_dir})\n\n"
            + "\n".join(lines)
            + f"\n\n{len(changes)} metrics: {significant} significant at {ALPHA:.0%}, {apart} not comparable. "
              + METHOD + " detectable: the smallest change those documents show with 80% power at 2.5% one-sided "
              "(worst case at the before score).")


METHOD = ("Tests on the documents both evaluated: Tango's score test for 0/1 metrics, the paired t-test otherwise; "
          "each gives its 95% interval and its p-value, so the two agree.")


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
