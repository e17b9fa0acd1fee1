"""Throughput benchmark: the suite through our flow against the physical limit of the one server.

    uv run python perf/throughput.py [-c local] [--concurrency 64] [--out DIR] [key=value ...]
    uv run python perf/throughput.py deployment.replicas=2     # the suite over two servers, the replay too

1. runs the suite through the flow (the CLI, as a user would) into a fresh output folder;
2. takes the requests the harnesses sent (the bodies the gate kept: `evaluation.keep_requests=true`) and
   replays them with a plain client at high concurrency against a fresh server of the same model (as many
   replicas as the flow had, the requests dealt round-robin): the shortest time the servers need for the
   suite — the physical limit;
3. prints the ratio flow / limit, model loads per suite, requests in flight (the gate's peak and
   mean), and per benchmark the orchestration overhead: harness start → first request, last
   response → result recorded. The figures go to <out>/throughput.json as well.

Both sides are timed from a loaded model: the flow from the moment its server answered (the gate
opened) to the last result recorded; its end-to-end time, model load included, is printed beside.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

from nemotron.benchmarks.runner import RESULT_FILE
from nemotron.config import models
from nemotron.config.schema import load_config
from nemotron.serving import jobs, replicas
from nemotron.serving.gate import RECORD_FILE

REPO = Path(__file__).resolve().parents[1]
_STARTED = re.compile(r"^# nemotron: run_eval \S+ at ([0-9.]+) ", re.M)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total else 0.0


class CpuSampler:
    """The machine's busy CPU, sampled each second: core-seconds spent between two moments."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), cpu_times()[0]))
            self._stop.wait(1.0)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def core_seconds(self, start: float, end: float) -> float:
        def at(t: float) -> int:
            return min(self.samples, key=lambda s: abs(s[0] - t))[1]
        return round((at(end) - at(start)) / os.sysconf("SC_CLK_TCK"), 1)


def run_flow(config: str, out: Path, overrides: list[str]) -> tuple[Path, float, float, CpuSampler]:
    """The suite through the CLI; returns its run folder, wall seconds, the machine's busy share and
    its CPU samples."""
    env = dict(os.environ)
    env.setdefault("HF_HOME", str(REPO.parent / "shared" / "hf-home"))
    cmd = [sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", config, f"evaluation.output_dir={out}",
           *overrides]
    print("$", " ".join(cmd), flush=True)
    cpu, start = cpu_times(), time.monotonic()
    with (out / "flow.log").open("w") as log, CpuSampler() as sampler:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    wall, busy = time.monotonic() - start, busy_share(cpu, cpu_times())
    if rc != 0:
        sys.exit(f"the flow failed (exit {rc}); its output: {out / 'flow.log'}")
    (summary,) = out.glob("*/*/results.json")
    return summary.parent, wall, busy, sampler


def logged_requests(run_dir: Path) -> dict[str, list[dict]]:
    """Every distinct request body each benchmark sent, as the gate kept them (`evaluation.keep_requests`):
    a request sent twice (a retry, a relaunch) is counted once, as a cache would answer it."""
    found = {}
    for kept in sorted((run_dir / "requests").glob("*.jsonl")):
        bodies = {json.dumps(json.loads(line)["body"], sort_keys=True) for line in kept.read_text().splitlines()}
        found[kept.stem] = [json.loads(b) for b in sorted(bodies)]
    return found


async def replay(base_urls: list[str], requests: list[dict], concurrency: int) -> tuple[float, int]:
    """Send them all, `concurrency` at a time, dealt round-robin over the servers; (seconds from first send to
    last answer, failures)."""
    limit = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(session: aiohttp.ClientSession, base_url: str, body: dict) -> None:
        nonlocal failures
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        async with limit, session.post(base_url + path, json=body) as r:
            await r.read()
            failures += r.status != 200

    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        start = time.monotonic()
        await asyncio.gather(*(one(session, base_urls[i % len(base_urls)], body) for i, body in enumerate(requests)))
        return time.monotonic() - start, failures


def physical_limit(config: str, overrides: list[str], out: Path, requests: list[dict],
                   concurrency: int) -> dict:
    """Fresh servers of the same model (deployment.replicas of them), the suite's requests replayed against them."""
    cfg = load_config(config, overrides)
    dep = cfg.deployment
    model = models.resolve(models.parse(cfg), print)
    start = time.monotonic()
    launch = functools.partial(jobs.serve, dep, model.path, out / "replay")
    with replicas.serve(launch, dep.replicas, print, 0, dep.health_interval, dep.hang_timeout) as fleet:
        fleet.wait_ready()
        load = time.monotonic() - start
        cpu = cpu_times()
        seconds, failures = asyncio.run(replay(list(fleet.urls().values()), requests, concurrency))
        after = cpu_times()
    return {"seconds": round(seconds, 1), "requests": len(requests), "failures": failures,
            "concurrency": concurrency, "replicas": dep.replicas, "model_load_seconds": round(load, 1),
            "machine_busy": busy_share(cpu, after),
            "core_seconds": round((after[0] - cpu[0]) / os.sysconf("SC_CLK_TCK"), 1)}


def flow_figures(run_dir: Path, wall: float, busy: float, cpu: CpuSampler) -> dict:
    launches = json.loads((run_dir / RECORD_FILE).read_text())
    recorded = {p.name: (p / RESULT_FILE).stat().st_mtime for p in run_dir.iterdir() if (p / RESULT_FILE).exists()}
    opened, done = launches[0]["opened"], max(recorded.values())
    per_bench = {}
    for name, when in recorded.items():
        traffic = [rec["benchmarks"][name] for rec in launches if name in rec["benchmarks"]]
        starts = [float(t) for t in _STARTED.findall((run_dir / name / "run_eval.log").read_text())]
        if not traffic or not starts or traffic[0]["first_request"] is None:
            continue
        per_bench[name] = {
            "requests": sum(t["requests"] for t in traffic),
            "start_to_first_request": round(traffic[0]["first_request"] - starts[0], 1),
            "last_response_to_recorded": round(when - max(t["last_response"] for t in traffic), 1),
        }
    loads = sum((run_dir / log).read_text().count("Application startup complete")
                for log in os.listdir(run_dir) if re.fullmatch(r"server(-replica-\d+)?(-\d+)?\.log", log))
    busy_s = sum(rec["busy_seconds"] for rec in launches)
    return {"seconds": round(done - opened, 1), "end_to_end_seconds": round(wall, 1), "model_loads": loads,
            "in_flight_budget": launches[0]["budget"], "peak_in_flight": max(r["peak_in_flight"] for r in launches),
            "mean_in_flight": launches[0]["mean_in_flight"], "server_idle_seconds": round(done - opened - busy_s, 1),
            "requests_sent": sum(b["requests"] for rec in launches for b in rec["benchmarks"].values()),
            "replicas": {f"{r['name']} ({r['url']})": r["requests"] for rec in launches for r in rec["replicas"]},
            "machine_busy": busy, "core_seconds": cpu.core_seconds(opened, done), "benchmarks": per_bench}


def table(doc: dict) -> str:
    f, lim = doc["flow"], doc["limit"]
    rows = [
        (f"physical limit (replay, concurrency {lim['concurrency']}, {lim['replicas']} server(s))",
         f"{lim['seconds']:.1f} s",
         f"{lim['requests']} requests, {lim['failures']} failed, machine busy {lim['machine_busy']:.0%}"),
        ("suite through the flow (server ready → done)", f"{f['seconds']:.1f} s",
         f"{f['requests_sent']} requests sent; server idle {f['server_idle_seconds']:.1f} s (none in flight)"),
        ("machine CPU: flow vs replay", f"{f['core_seconds']:.0f} core-s",
         f"replay {lim['core_seconds']:.0f} core-s: harnesses (start-up, scoring) used "
         f"{f['core_seconds'] - lim['core_seconds']:.0f} of {os.cpu_count()} cores × {f['seconds']:.0f} s"),
        ("ratio flow / limit (goal ≤ 1.15)", f"{doc['ratio']:.2f}", ""),
        ("suite end to end (model load included)", f"{f['end_to_end_seconds']:.1f} s",
         f"ratio {doc['end_to_end_ratio']:.2f}; machine busy {f['machine_busy']:.0%}"),
        ("model loads per suite (goal: one per replica)", str(f["model_loads"]), ""),
        ("requests per replica", str(len(f["replicas"])),
         ", ".join(f"{name}: {n}" for name, n in f["replicas"].items())),
        ("requests in flight", f"peak {f['peak_in_flight']}", f"mean {f['mean_in_flight']}, budget "
                                                             f"{f['in_flight_budget']}"),
    ]
    out = [f"{a:<50} {b:>12}  {c}" for a, b, c in rows]
    out += ["", f"{'benchmark':<36} {'requests':>8} {'start→first request':>20} {'last response→recorded':>23}"]
    for name, b in doc["flow"]["benchmarks"].items():
        out.append(f"{name:<36} {b['requests']:>8} {b['start_to_first_request']:>18.1f} s "
                   f"{b['last_response_to_recorded']:>21.1f} s")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-c", "--config", default="local")
    ap.add_argument("--concurrency", type=int, default=64, help="the replay client's requests at once")
    ap.add_argument("--out", type=Path, help="working folder (default: a new temporary one)")
    ap.add_argument("overrides", nargs="*", help="config overrides, as on `nemotron nano3 eval`")
    args = ap.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="nemotron-perf-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)

    (out / "flow").mkdir()
    run_dir, wall, busy, cpu = run_flow(args.config, out / "flow", [*args.overrides, "evaluation.keep_requests=true"])
    flow = flow_figures(run_dir, wall, busy, cpu)
    requests = [r for reqs in logged_requests(run_dir).values() for r in reqs]
    limit = physical_limit(args.config, args.overrides, out, requests, args.concurrency)
    doc = {"config": args.config, "overrides": args.overrides, "cores": os.cpu_count(), "flow": flow,
           "limit": limit, "ratio": round(flow["seconds"] / limit["seconds"], 2),
           "end_to_end_ratio": round(flow["end_to_end_seconds"] / (limit["seconds"] + limit["model_load_seconds"]), 2)}
    (out / "throughput.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(table(doc))
    print(f"\nfigures: {out / 'throughput.json'}; flow output: {run_dir}")


if __name__ == "__main__":
    main()
