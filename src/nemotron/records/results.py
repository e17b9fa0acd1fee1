"""Typed benchmark results: parsed from nemo-evaluator's output folder, rendered as tables.

One function reads a run's files (`parse_output_dir`) and one writes the suite's summary
(`write_summary`); everything else passes the frozen records below.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nemotron.config import secrets
from nemotron.errors import ConfigError

SCHEMA_VERSION = 1


def write_atomic(path: Path, text: str, mode: int | None = None) -> Path:
    """Write a whole file or nothing: a temporary file in the same folder, renamed over the target,
    so a crash mid-write never leaves a truncated record for `eval status` or `eval export`.
    `mode`: the file's permissions, else what the umask gives a new file (records are the team's data: a shared
    results folder stays readable to the team; secrets never go through here)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode if mode is not None else 0o666 & ~umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a write that failed (a full disk): name the record
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    return path


def umask() -> int:
    """The process's umask, read without setting it (os.umask sets it, for every thread, while it reads)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_json(path: Path) -> Any:
    """A record file; a missing one raises OSError, a damaged one a one-line ConfigError naming it."""
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path} is damaged ({e}); delete it, or run the evaluation again to rewrite it") from None


@dataclass(frozen=True)
class Score:
    """One metric of one benchmark (e.g. hellaswag acc_norm), with its stderr and sample count."""

    benchmark: str
    metric: str
    value: float
    stderr: float | None
    samples: int | None


@dataclass(frozen=True)
class BenchmarkResult:
    """The outcome of one benchmark run; `error` is set when it failed."""

    benchmark: str
    status: str  # "completed" | "failed"
    output_dir: str
    seconds: float
    scores: tuple[Score, ...] = ()
    error: str | None = None
    failure: str | None = None  # infrastructure | configuration | model (errors.BenchmarkError.kind)
    attempts: int = 1
    reused: bool = False  # completed by an earlier run with the same key: nothing was sent

    @property
    def ok(self) -> bool:
        return self.status == "completed"


@dataclass(frozen=True)
class SuiteResult:
    model: str
    run_dir: str
    results: tuple[BenchmarkResult, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> list[str]:
        return [r.benchmark for r in self.results if not r.ok]


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def lm_eval_results(output_dir: Path) -> tuple[dict[str, Any], str]:
    """lm-eval's own newest results JSON in the folder (group tree and sample counts) and its timestamp, which
    its per-sample files (`samples_<task>_<timestamp>.jsonl`) carry too."""
    files = sorted(glob.glob(str(output_dir / "*" / "results_*.json")))
    if not files:
        return {}, ""
    return json.loads(Path(files[-1]).read_text()), re.sub(r"^results_|\.json$", "", Path(files[-1]).name)


def top_level(entries: list[str], group_subtasks: dict[str, list[str]]) -> list[str]:
    """Entries that are not a subtask of another entry: mmlu_str, not its 57 subjects."""
    children = {c for subs in group_subtasks.values() for c in subs}
    top = [e for e in entries if e not in children]
    return top or entries


def _samples(entry: str, group_subtasks: dict[str, list[str]], n_samples: dict[str, Any]) -> int | None:
    if entry in n_samples:
        return int(n_samples[entry].get("effective", 0))
    leaves = group_subtasks.get(entry) or []
    counts = [_samples(c, group_subtasks, n_samples) for c in leaves]
    return sum(c for c in counts if c is not None) if counts else None


def parse_output_dir(benchmark: str, output_dir: Path) -> tuple[Score, ...]:
    """Scores from `results.yml` (+ sample counts from lm-eval's JSON). Raises ValueError if absent."""
    path = output_dir / "results.yml"
    if not path.is_file():
        raise ValueError(f"no results.yml in {output_dir}")
    data = (yaml.safe_load(path.read_text()) or {}).get("results") or {}
    groups = data.get("groups") or data.get("tasks") or {}
    summary, _ = lm_eval_results(output_dir)
    group_subtasks = summary.get("group_subtasks") or {}
    n_samples = summary.get("n-samples") or {}
    scores = []
    entries = top_level(list(groups), group_subtasks)
    for entry in entries:
        samples = _samples(entry, group_subtasks, n_samples)
        for metric in (groups[entry].get("metrics") or {}).values():
            for score_name, score in (metric.get("scores") or {}).items():
                value = _float(score.get("value"))
                if value is None:
                    continue
                label = score_name if len(entries) == 1 else f"{entry}/{score_name}"
                stderr = _float((score.get("stats") or {}).get("stderr"))
                scores.append(Score(benchmark, label, value, stderr, samples))
    if not scores:
        raise ValueError(f"results.yml in {output_dir} holds no scores")
    return tuple(scores)


def score_rows(suite: SuiteResult) -> list[dict[str, Any]]:
    """One row per metric (and one per failed benchmark): for tables, artifacts and exports."""
    rows = []
    for r in suite.results:
        if not r.ok:
            rows.append({"benchmark": r.benchmark, "metric": "FAILED", "value": None, "stderr": None,
                         "samples": None, "seconds": round(r.seconds, 1)})
        for s in r.scores:
            rows.append({"benchmark": s.benchmark, "metric": s.metric, "value": round(s.value, 4),
                         "stderr": None if s.stderr is None else round(s.stderr, 4),
                         "samples": s.samples, "seconds": round(r.seconds, 1)})
    return rows


def render_table(suite: SuiteResult) -> str:
    """The terminal score table: benchmark, metric, value ± stderr, samples, seconds."""
    head = ("benchmark", "metric", "value", "± stderr", "samples", "seconds")
    body = [
        (r["benchmark"], r["metric"], "-" if r["value"] is None else f"{r['value']:.4f}",
         "" if r["stderr"] is None else f"± {r['stderr']:.4f}",
         "" if r["samples"] is None else str(r["samples"]), f"{r['seconds']:.0f}")
        for r in score_rows(suite)
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *map(line, body)])


@dataclass(frozen=True)
class Previous:
    """The last earlier evaluation of the same model series, to show what changed."""

    model: str  # the version it evaluated
    run_name: str
    when: str
    rows: tuple[dict[str, Any], ...]
    run_dir: str | None = None  # its results folder, when this machine has it (the samples to pair)


def artifact_key(series: str, kind: str) -> str:
    """`nano3-rl-model-scores`: one key per model series, so each version of it is one evaluation."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{series}-{kind}".lower()).strip("-")


def change(row: dict[str, Any], previous: Previous) -> str:
    """This row's value against the same benchmark and metric in `previous`: +0.0125, -0.0300, new."""
    if row["value"] is None:
        return ""
    before = next((p["value"] for p in previous.rows
                   if p["benchmark"] == row["benchmark"] and p["metric"] == row["metric"]), None)
    return "new" if before is None else f"{row['value'] - before:+.4f}"


TESTED = ("Each change is paired on the documents both evaluated, with its 95% interval and p-value from one test "
          "(Tango's score test for 0/1 metrics, the paired t-test otherwise); **bold**: significant at 5%.")


def _cell(row: dict[str, Any], previous: Previous, changes: dict[tuple[str, str], str] | None) -> str:
    if changes is None or row["value"] is None:
        return change(row, previous)
    return changes.get((row["benchmark"], row["metric"]), "new")


def render_markdown(suite: SuiteResult, previous: Previous | None = None, *, series: str | None = None,
                    version: str | None = None, changes: dict[tuple[str, str], str] | None = None) -> str:
    """The summary: scores, and with `previous` a change column against the last evaluation of the
    series; `version` is what `suite.model` resolved to (rl:latest → …/nano3-rl-model:v3). `changes`: the
    tested change per (benchmark, metric) (nemotron.records.compare); without it, the difference of the scores."""
    rows = score_rows(suite)
    shown = f"`{version}` (`{suite.model}`)" if version and version != suite.model else f"`{suite.model}`"
    out = [f"# Evaluation of {shown}", ""]
    if previous is not None:
        out += [f"Change against the previous evaluation of `{series}`: `{previous.model}` "
                f"(flow run `{previous.run_name}`, {previous.when}).", ""]
        out += [TESTED if changes is not None else "Its results folder is not on this machine: the change is the "
                "difference of the two scores, untested.", ""]
    elif series:
        out += [f"First evaluation of `{series}` recorded here: nothing to compare with.", ""]
    extra = previous is not None
    out += ["| benchmark | metric | value | ± stderr | samples | seconds |" + (" change |" if extra else ""),
            "|---|---|---|---|---|---|" + ("---|" if extra else "")]
    for r in rows:
        value = "**FAILED**" if r["value"] is None else f"{r['value']:.4f}"
        stderr = "" if r["stderr"] is None else f"{r['stderr']:.4f}"
        out.append(f"| {r['benchmark']} | {r['metric']} | {value} | {stderr} | {r['samples'] or ''} "
                   f"| {r['seconds']:.0f} |" + (f" {_cell(r, previous, changes)} |" if extra else ""))
    for r in suite.results:
        if not r.ok:
            out += ["", f"**{r.benchmark} failed** ({r.failure or 'unknown'} failure) after {r.attempts} attempt(s): "
                    f"{(r.error or '').splitlines()[0] if r.error else ''} (output: `{r.output_dir}`)"]
    return "\n".join(out) + "\n"


def write_summary(suite: SuiteResult) -> Path:
    """results.json + scores.md in the run folder; returns the JSON path."""
    run_dir = Path(suite.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": SCHEMA_VERSION, "model": suite.model, "failed": suite.failed,
           "results": [asdict(r) for r in suite.results]}
    path = write_atomic(run_dir / "results.json", json.dumps(doc, indent=2) + "\n")
    write_atomic(run_dir / "scores.md", render_markdown(suite))
    return path


def result_from_dict(doc: dict[str, Any]) -> BenchmarkResult:
    return BenchmarkResult(**{**doc, "scores": tuple(Score(**s) for s in doc["scores"])})


def read_summary(path: Path) -> SuiteResult:
    return summary_from_doc(read_json(path), path)


def summary_from_doc(doc: dict[str, Any], path: Path | str) -> SuiteResult:
    """results.json's document (read here, or through a tunnel) as a SuiteResult."""
    try:
        return SuiteResult(doc["model"], str(Path(path).parent), tuple(result_from_dict(r) for r in doc["results"]))
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{path} is damaged (not a results record: {type(e).__name__}: {e}); run the evaluation "
                          "again to rewrite it") from None


def write_manifest(run_dir: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """manifest.json: what was evaluated and how (model ref and digest, harness versions, task configs,
    server args); exported with the results and read back by `eval export`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = secrets.masked({"schema_version": SCHEMA_VERSION, **doc})  # a task's parameter may hold a secret's value
    write_atomic(run_dir / "manifest.json", json.dumps(doc, indent=2, default=str) + "\n")
    return doc
