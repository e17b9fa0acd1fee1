"""Scale benchmark: the pipeline at a production in-flight budget, beside lm-eval alone, against a server that
answers at once (so the pipeline, not the model, sets the pace).

    uv run python perf/scale.py                          # locally, budget 2048, hellaswag + arc_challenge at 500
    uv run python perf/scale.py --ssh local-slurm-ssh    # the same flow over the SSH login node (Slurm + forward)
    uv run python perf/scale.py --limit 200 --in-flight 512
    uv run python perf/scale.py --serve --port 8000      # only the instant upstream (what the Slurm job runs)

1. starts the instant upstream: an OpenAI-compatible `/v1/completions` that answers every prompt at once with
   echo log-probabilities of one entry per word (as vLLM answers), counting requests and the most it held at once;
2. runs the flow as a user would (`nemotron nano3 eval -c local deployment.type=none deployment.url=...`, or
   `--run PROFILE deployment.type=generic` launching this upstream as the Slurm job) against a Prefect server
   started before it (a team's, already running: its start-up is not the flow's), sampling the descriptors and
   threads of the flow's process tree;
3. runs lm-eval alone: the very commands nemo-evaluator ran for the flow's benchmarks (their few-shot, cache,
   per-sample log, concurrency), pointed at the upstream, started together as the flow started its harnesses;
   with `--ssh`, a second time through the same kind of SSH forward to the login node, as lm-eval run here against
   a cluster's server would have to reach it;
4. prints requests/s for each, their ratios, the peaks, and failed requests. The figures go to <out>/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("hellaswag", "arc_challenge")


# --- the instant upstream ----------------------------------------------------------------------------------------

def serve(port: int, host: str = "127.0.0.1", stats: Path | None = None) -> None:
    """An OpenAI-compatible server that answers at once; with `stats`, it writes its counts there every second."""
    from aiohttp import web

    seen = {"requests": 0, "in_flight": 0, "peak_in_flight": 0, "first": None, "last": None}

    def logprobs(prompt: str) -> dict:
        words = [f" {w}" for w in prompt.split()] or [" "]
        return {"tokens": words, "token_logprobs": [None] + [-1.0] * (len(words) - 1),
                "top_logprobs": [None] + [{w: -1.0} for w in words[1:]],
                "text_offset": list(range(len(words)))}

    async def completions(request: web.Request) -> web.Response:
        seen["requests"] += 1
        seen["first"] = seen["first"] or time.time()
        seen["in_flight"] += 1
        seen["peak_in_flight"] = max(seen["peak_in_flight"], seen["in_flight"])
        try:
            body = await request.json()
            prompts = body.get("prompt")
            prompts = prompts if isinstance(prompts, list) else [prompts]
            echo = body.get("echo")
            choices = [{"index": i, "text": f"{p if echo else ''} The answer is 4.", "finish_reason": "stop",
                        "logprobs": logprobs(str(p)) if body.get("logprobs") is not None else None}
                       for i, p in enumerate(prompts)]
            return web.json_response({"id": "cmpl-scale", "object": "text_completion", "model": body.get("model"),
                                      "choices": choices, "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                                    "total_tokens": 2}})
        finally:
            seen["in_flight"] -= 1
            seen["last"] = time.time()

    async def health(request: web.Request) -> web.Response:
        return web.json_response({})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "nano3", "object": "model"}]})

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", completions)
        app.router.add_get("/health", health)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=4096).start()
        while True:
            await asyncio.sleep(1)
            if stats is not None:
                stats.write_text(json.dumps(seen))

    asyncio.run(main())


# --- measuring a process tree ------------------------------------------------------------------------------------

class TreeSampler:
    """Peak descriptors and threads of a process and its descendants, sampled every 0.2 s."""

    def __init__(self, pid: int):
        self.pid, self.fds, self.threads = pid, 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
        children: dict[int, list[int]] = {}
        for pid, ppid in zip(out[::2], out[1::2], strict=True):
            children.setdefault(int(ppid), []).append(int(pid))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        return tree

    def _run(self) -> None:
        while not self._done.wait(0.2):
            fds = threads = 0
            for pid in self._tree():
                try:
                    fds += len(os.listdir(f"/proc/{pid}/fd"))
                    threads += len(os.listdir(f"/proc/{pid}/task"))
                except OSError:
                    continue
            self.fds, self.threads = max(self.fds, fds), max(self.threads, threads)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(2)


def timed(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run `cmd` to its end: seconds, exit code, peak descriptors and threads of its tree."""
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        sampler = TreeSampler(proc.pid)
        rc = proc.wait()
        sampler.stop()
    return {"seconds": round(time.monotonic() - start, 1), "rc": rc, "peak_fds": sampler.fds,
            "peak_threads": sampler.threads}


def upstream_counts(stats: Path) -> dict:
    time.sleep(1.5)  # its last write
    return json.loads(stats.read_text()) if stats.exists() else {}


# --- the two sides -----------------------------------------------------------------------------------------------

def tokenizer() -> str:
    from nemotron.serving import runtime

    return str(runtime.ensure_builtin_model("smollm2-135m-instruct"))


def lm_eval_alone(flow_out: Path, url: str, out: Path, env: dict[str, str], name: str = "lm-eval") -> dict:
    """lm-eval by itself: the very commands nemo-evaluator ran for the flow's benchmarks (their few-shot, cache,
    per-sample log and concurrency), pointed straight at the upstream instead of the gate, into fresh folders,
    started together as the flow's harnesses were (`evaluation.max_parallel` 2)."""
    commands = []
    for log in sorted(flow_out.glob("benchmarks/*/run_eval.log")):
        (ran,) = re.findall(r"Running command: (.*?)  logger=nemo_evaluator", log.read_text())[:1]
        words = shlex.split(ran)
        words = words[1:] if words[0].startswith("OPENAI_API_KEY=") else words
        fresh = out / name / log.parent.name
        line = shlex.join(words).replace(str(log.parent.resolve()), str(fresh))
        commands.append(re.sub(r"base_url=http://127\.0\.0\.1:\d+/[\w.-]+/v1/", f"base_url={url}/v1/", line))
    script = out / f"{name}.sh"
    script.write_text("set -e\n" + "".join(f"{c} > {out}/{name}-{i}.log 2>&1 &\n" for i, c in enumerate(commands))
                      + "for job in $(jobs -p); do wait $job; done\n")
    return timed(["bash", str(script)], {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"},
                 out / f"{name}.log")


@contextlib.contextmanager
def forwarded(url: str, profile_name: str) -> Iterator[str]:
    """`url` reached through the profile's login node by the flow's own kind of forward (OpenSSH's `ssh -L`)."""
    from urllib.parse import urlsplit

    from nemotron.config.profiles import load_profile
    from nemotron.serving.cluster import PortForward

    profile, target = load_profile(profile_name), urlsplit(url)
    forward = PortForward(profile.host, profile.user, profile.identity, target.hostname, target.port)
    try:
        yield f"http://127.0.0.1:{forward.local_port}"
    finally:
        forward.close()


@contextlib.contextmanager
def prefect_server(env: dict[str, str], home: Path) -> Iterator[dict[str, str]]:
    """The team's Prefect server, running before the suite (as it is for a production run): the flow's figures
    are not its start-up. One given in PREFECT_API_URL is used as it is."""
    if env.get("PREFECT_API_URL"):
        yield env
        return
    from nemotron.serving.endpoints import free_port

    home.mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server_env = {**env, "PREFECT_HOME": str(home), "PREFECT_UI_API_URL": url}
    with (home / "server.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port), "--analytics-off"], env=server_env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        import httpx

        while server.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield {**env, "PREFECT_API_URL": url, "PREFECT_HOME": str(home)}
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


def flow(url: str | None, limit: int, in_flight: int, out: Path, env: dict[str, str], ssh: str | None) -> dict:
    """The flow through the CLI: against the running upstream, or with it as the Slurm job of `ssh`'s profile."""
    common = [f"evaluation.in_flight={in_flight}", f"evaluation.output_dir={out / 'flow'}",
              f"evaluation.nemo_evaluator_config.config.params.limit_samples={limit}",
              f"evaluation.nemo_evaluator_config.config.params.parallelism={in_flight}",
              "evaluation.nemo_evaluator_config.config.params.max_retries=0", "evaluation.retries=0",
              f"run.model={tokenizer()}", "deployment.served_model_name=nano3"]
    if ssh is None:
        where = ["-c", "local", "deployment.type=none", f"deployment.url={url}"]
    else:
        command = f"{sys.executable} {REPO / 'perf' / 'scale.py'} --serve --host {{host}} --port {{port}} " \
                  f"--stats {out / 'upstream.json'}"
        where = ["-c", "local", "--run", ssh, "deployment.type=generic", f"deployment.command={command}",
                 "deployment.extra_args=''", "deployment.venv=null"]
    cmd = [sys.executable, "-m", "nemotron.cli", "nano3", "eval", *where, *sum((["-t", t] for t in TASKS), []),
           *common]
    result = timed(cmd, env, out / "flow.log")
    gate = sorted((out / "flow").glob("*/*/in-flight.json"))
    if gate:
        launch = json.loads(gate[-1].read_text())[-1]
        result.update(gate_peak=launch["peak_in_flight"], gate_mean=launch["mean_in_flight"],
                      gate_requests=sum(b["requests"] for b in launch["benchmarks"].values()),
                      gate_failed=sum(b["failed"] for b in launch["benchmarks"].values()))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", action="store_true", help="only run the instant upstream")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--stats", type=Path, help="with --serve: write the upstream's counts here")
    ap.add_argument("--ssh", metavar="PROFILE", help="run the flow over this Slurm profile (e.g. local-slurm-ssh)")
    ap.add_argument("--limit", type=int, default=500, help="samples per task")
    ap.add_argument("--in-flight", type=int, default=2048, help="the budget, and lm-eval's num_concurrent")
    ap.add_argument("--out", type=Path, help="working folder (default: a new temporary one)")
    ap.add_argument("--skip-lm-eval", action="store_true")
    args = ap.parse_args()
    from nemotron.serving.runtime import raise_open_files

    raise_open_files()  # lm-eval alone and the upstream hold thousands of connections too (the flow raises its own)
    if args.serve:
        serve(args.port, args.host, args.stats)
        return

    from nemotron.serving.endpoints import free_port

    out = args.out or Path(tempfile.mkdtemp(prefix="nemotron-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "NEMO_EVALUATOR_TELEMETRY_LEVEL": "0",
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    figures: dict = {"tasks": TASKS, "limit": args.limit, "in_flight": args.in_flight,
                     "where": args.ssh or "local"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    upstream = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port),
                                 "--stats", str(out / "local-upstream.json")])
    try:
        import httpx

        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with prefect_server(env, out / "prefect") as flow_env:
            figures["flow"] = flow(url, args.limit, args.in_flight, out, flow_env, args.ssh)
        stats = out / ("upstream.json" if args.ssh else "local-upstream.json")
        figures["flow"]["upstream"] = upstream_counts(stats)
        for side in () if args.skip_lm_eval else ("lm_eval", "lm_eval_ssh") if args.ssh else ("lm_eval",):
            upstream.kill()
            upstream.wait()
            stats = out / f"{side}-upstream.json"
            upstream = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(port), "--stats",
                                         str(stats)])
            time.sleep(2)
            with forwarded(url, args.ssh) if side == "lm_eval_ssh" else contextlib.nullcontext(url) as reached:
                figures[side] = lm_eval_alone(out / "flow", reached, out, env, side.replace("_", "-"))
            figures[side]["upstream"] = upstream_counts(stats)
    finally:
        upstream.kill()
    sides = ("lm_eval", "lm_eval_ssh", "flow")
    for side in sides:
        up = figures.get(side, {}).get("upstream", {})
        if up.get("requests"):
            figures[side]["requests_per_s"] = round(up["requests"] / figures[side]["seconds"], 1)
            figures[side]["sending_seconds"] = round(up["last"] - up["first"], 1)  # first request to last answer
            figures[side]["sending_requests_per_s"] = round(up["requests"] / max(0.1, up["last"] - up["first"]), 1)
    (out / "scale.json").write_text(json.dumps(figures, indent=2))
    print(f"scale: {', '.join(TASKS)} at limit {args.limit}, budget {args.in_flight}, "
          f"{'over ' + args.ssh if args.ssh else 'locally'} (figures: {out / 'scale.json'})")
    for side in sides:
        if side in figures:
            f, up = figures[side], figures[side].get("upstream", {})
            print(f"  {side:11s} {f['seconds']:7.1f} s  rc {f['rc']}  {up.get('requests', 0):6d} requests  "
                  f"{f.get('requests_per_s', 0):7.1f} req/s overall, {f.get('sending_requests_per_s', 0):7.1f} req/s "
                  f"while sending ({f.get('sending_seconds', 0)} s)  upstream peak in flight "
                  f"{up.get('peak_in_flight', 0):5d}"
                  f"  peak fds {f['peak_fds']:5d}  peak threads {f['peak_threads']:5d}"
                  + (f"  gate peak {f['gate_peak']} mean {f['gate_mean']} failed {f['gate_failed']}"
                     if "gate_peak" in f else ""))
    for baseline, what in (("lm_eval", "lm-eval alone"), ("lm_eval_ssh", "lm-eval alone through an SSH forward")):
        if baseline in figures and figures["flow"].get("requests_per_s"):
            ratio = figures[baseline]["seconds"] / figures["flow"]["seconds"]
            sending = figures["flow"]["sending_requests_per_s"] / figures[baseline]["sending_requests_per_s"]
            figures[f"ratio_{baseline}"], figures[f"sending_ratio_{baseline}"] = round(ratio, 2), round(sending, 2)
            print(f"  ratio: the flow at {ratio:.2f}x {what} end to end (start-ups included), {sending:.2f}x while "
                  "sending")
    (out / "scale.json").write_text(json.dumps(figures, indent=2))

if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
