"""An index of evaluation runs on this machine, by Prefect flow run id.

It tells `eval status RUN` where the results are and which server job served them, and lets a
cancellation or crash hook (which runs after the flow's process is gone) cancel that job.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from nemotron.errors import ConfigError
from nemotron.records.results import write_atomic
from nemotron.serving import runtime


def index_dir() -> Path:
    return runtime.home() / "runs"


MIRROR = "NEMOTRON_RUN_RECORD"  # a detached job's folder keeps a copy, which `eval status JOB` reads from afar


_lock = threading.RLock()  # a read-modify-write: the flow, its replicas' threads and the cancel watch all save


def save(run_id: str, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the run's record."""
    with _lock:
        record = load(run_id) or {"flow_run_id": run_id}
        record.update(fields)
        for path in (index_dir() / f"{run_id}.json", *([Path(os.environ[MIRROR])] if os.environ.get(MIRROR) else [])):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(record, indent=2))
        return record


def save_server(run_id: str, job: dict[str, str]) -> dict[str, Any]:
    """Record one server job of the run (replicas report from their own threads; a relaunch is another job)."""
    with _lock:
        servers = (load(run_id) or {}).get("servers", {})
        return save(run_id, servers={**servers, job["job_id"]: job})


def servers(record: dict[str, Any]) -> list[dict[str, str]]:
    """Every server job of the run, in launch order: replicas, and relaunches of dead ones."""
    return list(record.get("servers", {}).values())


def load(run_id: str) -> dict[str, Any] | None:
    try:
        return json.loads((index_dir() / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return None


def find(ref: str | None) -> dict[str, Any]:
    """A run by flow run id (or a unique prefix) or flow run name; None: the latest run."""
    records = [r for p in sorted(index_dir().glob("*.json"), key=lambda p: p.stat().st_mtime)
               if (r := load(p.stem)) is not None]
    if not records:
        raise ConfigError(f"no evaluation runs recorded on this machine yet ({index_dir()})")
    if ref is None:
        return records[-1]
    by_id = [r for r in records if r["flow_run_id"].startswith(ref)]
    by_name = [r for r in records if r.get("name") == ref]
    found = by_id or by_name
    if not found:
        recent = ", ".join(f"{r.get('name')} ({r['flow_run_id'][:8]})" for r in records[-5:])
        raise ConfigError(f"no run {ref!r}; give a flow run id or name, e.g. one of the latest: {recent}")
    if len(by_id) > 1:
        raise ConfigError(f"run id prefix {ref!r} is ambiguous: " + ", ".join(r["flow_run_id"] for r in by_id))
    return found[-1]  # the latest run of that name
