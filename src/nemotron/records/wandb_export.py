"""Record an evaluation in W&B: one run per evaluation, with lineage from the model artifact.

The run (job_type `evaluation`, grouped by model) declares the model artifact as its input, logs
each benchmark's scores with stderr and sample count, a table of all scores, and an output
artifact (type `evaluation-results`) holding the harness result files and the manifest. Its id
derives from the evaluation's identity, so exporting the same evaluation again updates that run.

W&B refuses `use_artifact` offline (`WANDB_MODE=offline`), so there the input is recorded in the
run config and the results artifact's metadata; exporting again online (`eval export RUN`)
resumes the same run and declares it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import netrc
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil

from nemotron.config import secrets
from nemotron.config.schema import EvalConfig
from nemotron.records.results import SuiteResult, score_rows

RESULTS_TYPE = "evaluation-results"
# harness output worth keeping; caches (cache/, *.db) are large and only serve reruns
RESULT_FILES = ("results.yml", "*.json", "*/results_*.json", "*/samples_*.jsonl", "run_eval.log")
SUITE_FILES = ("results.json", "scores.md", "manifest.json", "in-flight.json", "server*.log")


@dataclass(frozen=True)
class Target:
    entity: str | None
    project: str
    offline: bool


def api_key() -> str | None:
    """$WANDB_API_KEY, else the key `wandb login` stored in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        auth = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return None
    return auth[2] if auth else None


def detect_login(say: Callable[[str], None] = print) -> bool:
    """As the training stages do: a `wandb login` becomes WANDB_API_KEY for this process (never printed)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    key = api_key()
    if key:
        secrets.remember(key)
        os.environ["WANDB_API_KEY"] = key
        say("[info] Detected W&B login, setting WANDB_API_KEY")
    return key is not None


def target(cfg: EvalConfig) -> tuple[Target | None, str]:
    """Where to export, or None and the one-line reason it is skipped."""
    mode = os.environ.get("WANDB_MODE", "online")
    project, entity = cfg.export.wandb.project, cfg.export.wandb.entity
    if mode == "disabled":
        return None, "W&B export skipped: WANDB_MODE=disabled"
    if not project:
        return None, ("W&B export skipped: no W&B project configured (add a [wandb] table with project and entity "
                      "to env.toml, or pass export.wandb.project=NAME)")
    offline = mode in ("offline", "dryrun")
    if not offline and not api_key():
        return None, "W&B export skipped: not logged in (run `wandb login` or set WANDB_API_KEY)"
    return Target(entity, project, offline), ""


def evaluation_id(model_identity: str, benchmarks: list[dict[str, Any]]) -> str:
    """Same model version and same harness configs → same id (W&B run id, results artifact alias)."""
    doc = json.dumps({"model": model_identity, "benchmarks": sorted(benchmarks, key=lambda b: b["name"])},
                     sort_keys=True, default=str)
    return "eval-" + hashlib.sha256(doc.encode()).hexdigest()[:16]


def result_files(run_dir: Path, benchmarks: list[str]) -> list[tuple[Path, str]]:
    """(file, name in the artifact) for the suite's summary and each benchmark's harness output."""
    files = [(f, f.name) for pattern in SUITE_FILES for f in sorted(run_dir.glob(pattern)) if f.is_file()]
    for bench in benchmarks:
        out = run_dir / bench
        seen = set()
        for pattern in RESULT_FILES:
            for f in sorted(out.glob(pattern)):
                if f.is_file() and f not in seen:
                    seen.add(f)
                    files.append((f, f"{bench}/{f.relative_to(out)}"))
    return files


def export_within(seconds: float, suite: SuiteResult, manifest: dict[str, Any], cfg: EvalConfig,
                  where: Target) -> dict[str, Any]:
    """`export` in a process of its own, stopped (with the W&B service it started) after `seconds`: a W&B that
    does not answer would hold the run for as long as wandb retries. The results stay on disk for `eval export`."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads (the flow's)
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_export_in_child, args=(send, secrets.values(), suite, manifest, cfg, where),
                            name="wandb-export")
    child.start()
    send.close()
    try:
        if not receive.poll(seconds):
            raise ExportTimeout(f"W&B did not finish the export within export.timeout={seconds:g} s (W&B at "
                                f"{os.environ.get('WANDB_BASE_URL') or 'https://api.wandb.ai'}): it was stopped")
        ok, value = receive.recv()
    except EOFError:
        child.join(10)
        raise RuntimeError(f"the W&B export process ended with exit code {child.exitcode} and no result") from None
    finally:
        _kill_tree(child.pid)  # its W&B service (wandb-core) leads a session of its own: found as a descendant
        child.join()
        receive.close()
    if not ok:
        raise RuntimeError(value)
    return value


class ExportTimeout(TimeoutError):
    """The export took longer than export.timeout."""


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _export_in_child(send, remembered: list[str], suite: SuiteResult, manifest: dict[str, Any], cfg: EvalConfig,
                     where: Target) -> None:
    secrets.remember(*remembered)
    try:
        record = export(suite, manifest, cfg, where)
        import wandb

        # The W&B service writes the run's log out when it is torn down, which atexit does not do reliably in a
        # multiprocessing child, and the parent stops this process tree once told: told first, the service was
        # sometimes stopped before its flush, leaving an offline run with an empty log (recorded as exported).
        wandb.teardown()
    except BaseException as e:  # noqa: BLE001 - the parent says it, masked
        send.send((False, secrets.mask(f"{type(e).__name__}: {e}")))
        return
    send.send((True, record))


def export(suite: SuiteResult, manifest: dict[str, Any], cfg: EvalConfig, where: Target) -> dict[str, Any]:
    """Log the evaluation as one W&B run; returns what was recorded (run id, path, artifact)."""
    import wandb

    model = manifest["model"]
    eval_id = manifest["evaluation_id"]
    run = wandb.init(
        entity=where.entity, project=where.project, id=eval_id, resume="allow",
        name=f"eval-{model['slug']}", job_type="evaluation", group=model.get("collection") or model["slug"],
        tags=["nano3", "evaluation", *(t for t in (model.get("collection"),) if t),
              *([manifest.get("verdict") or "regression"] if manifest.get("regression") else [])],
        config=secrets.masked({"model": model, "evaluation": cfg.model_dump(mode="json"),
                               "harness": manifest["harness"]}),
        dir=os.environ.get("WANDB_DIR") or suite.run_dir,  # offline runs stay beside the results they hold
        settings=wandb.Settings(console="off", silent=True),
    )
    try:
        if model.get("resolved") and not where.offline:
            run.use_artifact(model["resolved"])  # the lineage edge: model → this evaluation
        metrics: dict[str, Any] = {}
        for r in suite.results:
            metrics[f"{r.benchmark}/status"] = r.status
            metrics[f"{r.benchmark}/seconds"] = round(r.seconds, 1)
            for s in r.scores:
                metrics[f"{r.benchmark}/{s.metric}"] = s.value
                if s.stderr is not None:
                    metrics[f"{r.benchmark}/{s.metric}_stderr"] = s.stderr
                if s.samples is not None:
                    metrics[f"{r.benchmark}/samples"] = s.samples
        rows = score_rows(suite)
        columns = ["benchmark", "metric", "value", "stderr", "samples", "seconds"]
        table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
        run.log({**{k: v for k, v in metrics.items() if not isinstance(v, str)}, "scores": table})
        run.summary.update({**metrics, **changes(manifest), "failed": suite.failed,
                            "regression": manifest.get("regression") or []})

        artifact = wandb.Artifact(
            f"{model.get('collection') or model['slug']}-eval", type=RESULTS_TYPE,
            description=f"nano3 evaluation of {model.get('resolved') or model['ref']}",
            metadata={"inputs": [model.get("resolved") or model["checkpoint_path"]], "model": model,
                      "evaluation_id": eval_id, "failed": suite.failed,
                      "scores": {f"{x['benchmark']}/{x['metric']}": x["value"] for x in rows if x["value"] is not None},
                      },
        )
        files = result_files(Path(suite.run_dir), [r.benchmark for r in suite.results])
        for path, name in files:
            artifact.add_file(str(_masked_copy(path, run.dir)), name=name)
        run.log_artifact(artifact, aliases=[eval_id, "latest"])
        record = {"run_id": run.id, "project": where.project, "entity": where.entity, "offline": where.offline,
                  "run_dir": run.dir and str(Path(run.dir).parent), "artifact": artifact.name, "files": len(files),
                  "url": None if where.offline else run.url}
    finally:
        run.finish()
    return record


def changes(manifest: dict[str, Any]) -> dict[str, Any]:
    """The tested changes against the previous evaluation, as summary keys beside each score:
    `<benchmark>/<metric>/change` (the difference, or why it is not comparable), `_low`, `_high`, `_p`,
    `_significant`."""
    comparison = manifest.get("comparison") or {}
    out: dict[str, Any] = {"compared_with": comparison.get("previous")} if comparison.get("previous") else {}
    for c in comparison.get("changes") or []:
        key = f"{c['benchmark']}/{c['metric']}/change"
        if not c["comparable"]:
            out[key] = "not comparable: " + "; ".join(c["differs"])
        elif c["difference"] is not None:
            out.update({key: c["difference"], f"{key}_low": c["low"], f"{key}_high": c["high"], f"{key}_p": c["p"],
                        f"{key}_significant": c["significant"]})
    return out


def _masked_copy(path: Path, scratch: str) -> Path:
    """The file itself, or a copy with secret values masked if it holds any (belt and braces: the files
    are written masked, but the harness's own outputs are not ours to trust)."""
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return path
    hidden = secrets.mask(text)
    if hidden == text:
        return path
    copy = Path(scratch) / "masked" / hashlib.sha256(str(path).encode()).hexdigest()[:16] / path.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(hidden)
    return copy


def describe(record: dict[str, Any]) -> str:
    where = f"{record['entity']}/{record['project']}" if record.get("entity") else record["project"]
    return (f"run {record['run_id']} in {where}"
            + (f" (offline: sync with `wandb sync {record['run_dir']}`)" if record["offline"] else f": {record['url']}")
            + f"; results artifact {record['artifact']} ({record['files']} files)")
