"""`nemotron nano3 eval status|logs [RUN]`: what a run did, from Prefect's API and the run's files.

The flow run and its benchmark task runs come from the Prefect API; the server job's state from
NeMo-Run (Slurm accounting or the local process); scores from the run folder.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import LogSort

from nemotron import results, runs, serving

LOG_PAGE = 200


def report(ref: str | None, logs: bool = False) -> str:
    record = runs.find(ref)
    run_id = UUID(record["flow_run_id"])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        if logs:
            entries, page = [], None
            while page is None or len(page) == LOG_PAGE:  # the API serves at most 200 per request
                page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                        sort=LogSort.TIMESTAMP_ASC, limit=LOG_PAGE, offset=len(entries))
                entries += page
            return _logs(record, entries)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
    return _status(record, flow_run, task_runs)


def _status(record: dict, flow_run, task_runs) -> str:
    run_dir = Path(record["run_dir"])
    state = flow_run.state
    lines = [f"run       {flow_run.name} ({flow_run.id})",
             f"model     {record.get('model')}",
             f"flow      {state.name if state else 'unknown'}" + (f": {state.message}" if state and state.message
                                                                    else ""),
             f"results   {run_dir}"]
    server = record.get("server")
    if server:
        where = f"Slurm job {server['job_id']}" if server["executor"] == "slurm" else f"local job {server['job_id']}"
        lines.append(f"server    {where} on {record.get('profile') or 'this machine'}: "
                     f"{serving.recorded_state(server)}")
    else:
        lines.append("server    not submitted")
    exported = record.get("wandb")
    if exported:
        lines.append(f"wandb     {exported}")
    summary = run_dir / "results.json"
    done = {r.benchmark: r for r in results.read_summary(summary).results} if summary.exists() else {}
    latest: dict[str, object] = {}
    for tr in sorted(task_runs, key=lambda t: t.expected_start_time or t.created):
        if "benchmark" not in tr.tags:  # e.g. the W&B export subflow
            continue
        latest[tr.name] = tr  # retries keep one task run; reruns of a name: the last wins
    lines.append("benchmarks")
    for name, tr in latest.items():
        result = done.get(name)
        if result is None and tr.state and tr.state.is_completed():
            result = results.BenchmarkResult(name, "completed", str(run_dir / name), 0.0,
                                             results.parse_output_dir(name, run_dir / name))
        scores = ", ".join(f"{s.metric} {s.value:.4f}" for s in result.scores[:3]) if result else ""
        error = f" ({result.failure or 'unknown'} failure, {result.attempts} attempt(s): " \
                f"{result.error.splitlines()[0][:120]})" if result and result.error else ""
        reused = " (reused: complete from an earlier run)" if result and result.reused else ""
        lines.append(f"  {name:<36} {tr.state.name if tr.state else 'unknown':<10} {scores}{reused}{error}")
    return "\n".join(lines)


def _logs(record: dict, entries) -> str:
    out = [f"{e.timestamp:%H:%M:%S} {_level(e.level):<7} {e.message}" for e in entries]
    logs = serving.server_logs(Path(record["run_dir"]))  # the newest launch's, if the server was relaunched
    server = record.get("server")
    tail = serving.log_tail(logs[-1], 40) if logs else serving.recorded_log_tail(server, 40) if server else ""
    if tail:
        out += ["", f"--- {logs[-1].name if logs else 'server log'} (last 40 lines) ---", tail.rstrip()]
    return "\n".join(out)


def _level(level: int) -> str:
    return {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(level, str(level))
