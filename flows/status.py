"""`nemotron nano3 eval status|logs|cancel RUN`: what a run did, from Prefect's API and the run's files; and its end.

The flow run and its benchmark task runs come from the Prefect API — any run it knows, whatever
machine ran it and however early it failed; this machine's run index (`nemotron.records.runs`) only adds
what the API does not hold: the results folder and the server job, read from NeMo-Run (Slurm
accounting or the local process), and the scores from the run folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelled, Cancelling

from nemotron.benchmarks import progress
from nemotron.errors import ConfigError, NemotronError
from nemotron.records import results, runs
from nemotron.serving import jobs

CANCEL_WAIT_SECONDS = 90.0  # for the process running the flow to stop it and cancel its servers
CRASH_HOOK_SECONDS = 30.0  # for the crash hook of a cancelled attached run to cancel its servers and mark it Cancelled
LOG_PAGE = 200
RECENT = 200  # flow runs searched for an id prefix
FLOW = "nano3-eval"


def report(ref: str | None, logs: bool = False) -> str:
    with get_client(sync_client=True) as client:
        record = locate(client, ref)
        try:
            return _report(client, record, logs)
        except (ObjectNotFound, httpx.HTTPError, OSError, RuntimeError) as e:
            if not record.get("run_dir") and not runs.servers(record):
                raise ConfigError(f"run {ref or record['flow_run_id']}: {_unknown(e)}, and this machine has no "
                                  "files of it") from None
            # a run this machine recorded, reported to an API that is gone (a detached job's temporary one)
            # or that never knew it: what this machine has of it
            return _logs(record, [], _unknown(e)) if logs else _status(record, None, [], {}, _unknown(e))


def cancel(ref: str) -> str:
    """What the UI's Cancel does: the flow run set Cancelling, so whatever runs it (a worker's runner, the attached
    CLI's cancel watch) stops it and its cancellation hook cancels its servers; then waits for it to end. A run that no
    process stops within CANCEL_WAIT_SECONDS (its process is gone), or that no Prefect API answers for, has the
    servers this machine recorded for it cancelled from here."""
    with get_client(sync_client=True) as client:
        record = locate(client, ref)
        name, run_id = record.get("name") or ref, UUID(record["flow_run_id"])
        try:
            flow_run = client.read_flow_run(run_id)
        except (ObjectNotFound, httpx.HTTPError, OSError, RuntimeError) as e:
            return _cancel_servers(record, f"{_unknown(e)}: the servers this machine recorded for run {name} are "
                                           "cancelled from here")
        if flow_run.state is not None and flow_run.state.is_final():
            raise NemotronError(f"run {flow_run.name} ({run_id}) has already ended ({flow_run.state.name}): nothing "
                                "to cancel")
        client.set_flow_run_state(run_id, Cancelling(message="Cancelled with `nemotron nano3 eval cancel`"),
                                  force=True)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        state, crashed_at = flow_run.state, None
        while time.monotonic() < deadline and not _ended(state, crashed_at):
            time.sleep(1.0)
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_crashed():
                crashed_at = crashed_at or time.monotonic()
        if state is not None and state.is_final():
            return f"run {flow_run.name} ({run_id}): {state.name}" + "".join(
                f"\nserver job {s.get('job_id')} [{s.get('name', 'server')}]" for s in runs.servers(record))
        client.set_flow_run_state(run_id, Cancelled(message="No process stopped the run within "
                                                    f"{CANCEL_WAIT_SECONDS:.0f} s of its cancel: its process is gone; "
                                                    "its servers were cancelled from its record"), force=True)
    return _cancel_servers(record, f"no process stopped run {flow_run.name} within {CANCEL_WAIT_SECONDS:.0f} s (its "
                                   "process is gone): marked Cancelled, and its recorded servers cancelled from here")


def _ended(state, crashed_at: float | None) -> bool:
    """Final, and not the Crashed an attached run passes through: the interrupt that stops it is a crash to Prefect,
    and its crash hook turns it into Cancelled once its servers are cancelled."""
    if state is None or not state.is_final():
        return False
    return not state.is_crashed() or time.monotonic() - (crashed_at or 0.0) > CRASH_HOOK_SECONDS


def _cancel_servers(record: dict, why: str) -> str:
    servers = runs.servers(record)
    for server in servers:
        jobs.cancel_recorded(server)
    if not servers:
        return f"{why}; this machine recorded no server for it"
    return "\n".join([why, *(f"server job {s.get('job_id')} [{s.get('name', 'server')}]: cancelled" for s in servers)])


def _unknown(error: BaseException) -> str:
    if isinstance(error, ObjectNotFound):
        return f"the Prefect API at {PREFECT_API_URL.value()} does not know this flow run"
    return f"the Prefect API at {PREFECT_API_URL.value()} does not answer ({type(error).__name__})"


def _report(client, record: dict, logs: bool) -> str:
    run_id = UUID(record["flow_run_id"])
    flow_run = client.read_flow_run(run_id)
    if logs:
        entries, page = [], None
        while page is None or len(page) == LOG_PAGE:  # the API serves at most 200 per request
            page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                    sort=LogSort.TIMESTAMP_ASC, limit=LOG_PAGE, offset=len(entries))
            entries += page
        return _logs(record, entries)
    task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
    shown = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), type=ArtifactFilterType(any_=["progress"])))
    figures = {a.key: a.description for a in shown if a.key and a.description}
    return _status(record, flow_run, task_runs, figures)


def locate(client, ref: str | None) -> dict:
    """The run's record: this machine's index when it has the run (or, with no RUN, its latest), else
    what the Prefect API knows of a flow run with that id, id prefix or name."""
    try:
        return runs.find(ref)
    except ConfigError:
        if ref is None:
            raise
    try:
        found = _from_api(client, ref)
    except (httpx.HTTPError, OSError, RuntimeError) as e:
        raise ConfigError(f"no run {ref!r} in this machine's runs, and {_unknown(e)}") from None
    if found is None:
        raise ConfigError(f"no run {ref!r}: no flow run with that id, id prefix or name on the Prefect server at "
                          f"{PREFECT_API_URL.value()}, nor in this machine's runs; list them with "
                          f"`prefect flow-run ls --flow-name {FLOW}`")
    return {"flow_run_id": str(found.id), "name": found.name, "model": found.parameters.get("model"),
            "profile": found.parameters.get("profile"), "run_dir": None}


def _from_api(client, ref: str):
    try:
        return client.read_flow_run(UUID(ref))
    except ValueError:  # not a whole id: a name, or an id prefix
        pass
    except ObjectNotFound:
        return None
    named = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[ref])),
                                  sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
    if named:
        return named[0]
    recent = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW])),
                                   sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=RECENT)
    matches = [r for r in recent if str(r.id).startswith(ref)]
    if len(matches) > 1:
        raise ConfigError(f"run id prefix {ref!r} is ambiguous: " + ", ".join(str(r.id) for r in matches))
    return matches[0] if matches else None


def _status(record: dict, flow_run, task_runs, figures: dict[str, str], unknown: str = "") -> str:
    """`figures`: the run's progress artifacts by key (what the board last showed: answered/total, rate, ETA).
    `flow_run` None: the API has none (`unknown` says why); what this machine recorded is shown."""
    run_dir = Path(record["run_dir"]) if record.get("run_dir") else None
    state = flow_run.state if flow_run else None
    model = record.get("model") or (flow_run.parameters.get("model") if flow_run else None) \
        or "(the config's run.model)"
    flow = f"{state.name if state else 'unknown'}" + (f": {state.message}" if state and state.message else "")
    name, run_id = (flow_run.name, flow_run.id) if flow_run else (record.get("name", "?"), record["flow_run_id"])
    lines = [f"run       {name} ({run_id})",
             f"model     {model}",
             f"flow      {flow if flow_run else f'unknown: {unknown}; shown: what this machine recorded'}",
             f"results   {run_dir or 'not on this machine (it ran elsewhere, or failed before writing any)'}"]
    if record.get("error"):  # what ended it, recorded here when the API could not be told (its state stays Running)
        lines.insert(3, f"error     {record['error']}")
    servers = runs.servers(record)
    for server in servers:  # one per replica
        where = f"Slurm job {server['job_id']}" if server["executor"] == "slurm" else f"local job {server['job_id']}"
        name = f" ({server['name']})" if server.get("name", "server") != "server" else ""
        lines.append(f"server    {where}{name} on {record.get('profile') or 'this machine'}: "
                     f"{jobs.recorded_state(server)}")
    if not servers:
        lines.append("server    not submitted" if run_dir else "server    not known on this machine (see its logs)")
    exported = record.get("wandb")
    if exported:
        lines.append(f"wandb     {exported}")
    summary = run_dir / "results.json" if run_dir else None
    done = {r.benchmark: r for r in results.read_summary(summary).results} if summary and summary.exists() else {}
    latest: dict[str, object] = {}
    for tr in sorted(task_runs, key=lambda t: t.expected_start_time or t.created):
        if "benchmark" not in tr.tags:  # e.g. the W&B export subflow
            continue
        latest[tr.name] = tr  # retries keep one task run; reruns of a name: the last wins
    if progress.artifact_key() in figures:
        lines.append(f"progress  {figures[progress.artifact_key()]}")
    lines.append("benchmarks")
    for name, tr in latest.items():
        result = done.get(name)
        if result is None and run_dir and tr.state and tr.state.is_completed():
            result = results.BenchmarkResult(name, "completed", str(run_dir / name), 0.0,
                                             results.parse_output_dir(name, run_dir / name))
        scores = ", ".join(f"{s.metric} {s.value:.4f}" for s in result.scores[:3]) if result else ""
        error = f" ({result.failure or 'unknown'} failure, {result.attempts} attempt(s): " \
                f"{result.error.splitlines()[0][:120]})" if result and result.error else ""
        reused = " (reused: complete from an earlier run)" if result and result.reused else ""
        now = "" if result else figures.get(progress.artifact_key(name), "")  # a running benchmark: how far it is
        lines.append(f"  {name:<36} {tr.state.name if tr.state else 'unknown':<10} {scores}{now}{reused}{error}")
    for name, result in done.items():  # recorded in the run's files, with no task run to show (the API has none)
        if name not in latest:
            scores = ", ".join(f"{s.metric} {s.value:.4f}" for s in result.scores[:3])
            lines.append(f"  {name:<36} {result.status:<10} {scores}".rstrip())
    for name in record.get("benchmarks") or []:  # planned, waiting for a harness slot (or the server)
        if name not in latest and name not in done:
            lines.append(f"  {name:<36} {'not started':<10} {figures.get(progress.artifact_key(name), '')}".rstrip())
    return "\n".join(lines)


def _logs(record: dict, entries, unknown: str = "") -> str:
    out = [f"{e.timestamp:%H:%M:%S} {_level(e.level):<7} {e.message}" for e in entries]
    if unknown:
        out.append(f"(no flow-run logs: {unknown}; the server logs this machine has follow)")
    newest = {server.get("name", "server"): server for server in runs.servers(record)}  # a relaunch replaces
    for name, server in newest.items():  # each replica's newest launch
        logs = jobs.server_logs(Path(record["run_dir"]), name) if record.get("run_dir") else []
        tail = jobs.log_tail(logs[-1], 40) if logs else jobs.recorded_log_tail(server, 40)
        if tail:
            out += ["", f"--- {logs[-1].name if logs else f'{name} log'} (last 40 lines) ---", tail.rstrip()]
    return "\n".join(out)


def _level(level: int) -> str:
    return {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(level, str(level))
