"""One in-flight budget for every benchmark that talks to the one server.

Each harness has its own `parallelism`; run several with a small fixed one and the server idles
while one finishes its tail, run them with a large one and they swamp it. The gate is a small
HTTP proxy in the flow's process: every harness sends to `<gate>/<benchmark>/v1/...` with a
parallelism as large as the whole budget, and the gate lets at most `budget` requests through to
the server at a time, whichever benchmarks they come from. It also counts what it forwards —
the figures the throughput benchmark (perf/) and `in-flight.json` report.

It listens on the loopback, where any user of a shared login node or worker could reach it, and it adds the
endpoint's key upstream: it answers only the run's own harnesses, which send its per-run token as their bearer
token (nemo-evaluator's `api_key_name`: the value stays in their environment, never in a file); anything else gets
a 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import re
import secrets as tokens
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import aiohttp
from aiohttp import web

from nemotron.config import secrets
from nemotron.records.results import write_atomic
from nemotron.serving.endpoints import Endpoint

FALLBACK_BUDGET = 32  # when the server publishes no KV-cache size (not vLLM, or no /metrics)
TOKENS_PER_REQUEST = 1024  # a benchmark prompt plus its answer, roughly: what one request holds in the KV cache
MAX_PER_ENGINE = 256  # vLLM's default max_num_seqs: more waits in its queue, not in ours
RECORD_FILE = "in-flight.json"
CLOSE_SECONDS = 1.0
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}
TOKEN_VAR = "NEMOTRON_GATE_TOKEN"  # the harness's variable holding the gate's token (its api_key_name)
JUDGE_ROUTE = "-judge"  # `<benchmark>-judge`: a served judge's requests for that benchmark
_KV_TOKENS = re.compile(r'^vllm:cache_config_info\{[^}]*\bkv_cache_size_tokens="?(\d+)', re.M)
_BLOCKS = re.compile(r'^vllm:cache_config_info\{[^}]*\bnum_gpu_blocks="(\d+)"', re.M)
_BLOCK_SIZE = re.compile(r'^vllm:cache_config_info\{[^}]*\bblock_size="(\d+)"', re.M)


def capacity(metrics: str) -> int | None:
    """Requests the server holds at once, from vLLM's Prometheus `cache_config_info` (one line per
    engine): its KV cache in tokens over what a request needs, capped per engine; None if absent."""
    tokens = [int(t) for t in _KV_TOKENS.findall(metrics)]
    if not tokens:
        blocks, sizes = _BLOCKS.findall(metrics), _BLOCK_SIZE.findall(metrics)
        tokens = [int(b) * int(s) for b, s in zip(blocks, sizes, strict=False)]
    if not tokens:
        return None
    return sum(min(MAX_PER_ENGINE, max(1, t // TOKENS_PER_REQUEST)) for t in tokens)


def provisional_budget(configured: int | None, engines: int) -> int:
    """The harness parallelism of benchmarks that start while the model loads, before the servers' capacity is
    known: the configured budget, else the most the gate could allow (MAX_PER_ENGINE per engine); the gate holds
    back what is over the real budget."""
    return configured or MAX_PER_ENGINE * engines


def budget_for(base_urls: list[str], configured: int | None,
               headers: dict[str, str] | None = None) -> tuple[int, str]:
    """The in-flight budget and where it came from: the config's `evaluation.in_flight`, else the sum of the
    servers' (replicas') capacities, else a fallback per server."""
    if configured:
        return configured, "evaluation.in_flight"
    found = [_capacity_of(url, headers) for url in base_urls]
    servers = f" of {len(base_urls)} replicas" if len(base_urls) > 1 else ""
    if None in found:
        return FALLBACK_BUDGET * len(base_urls), f"a fallback{servers}: the server publishes no KV-cache size"
    return sum(found), f"the KV cache{servers} ({TOKENS_PER_REQUEST} tokens per request)"  # type: ignore[arg-type]


def _capacity_of(base_url: str, headers: dict[str, str] | None) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{base_url}/metrics", headers=headers or {}),
                                    timeout=10) as r:
            return capacity(r.read().decode(errors="replace"))
    except OSError:
        return None


@dataclass
class Traffic:
    """What one benchmark sent through the gate (epoch seconds)."""

    requests: int = 0
    answered: int = 0  # a 2xx from the server (the progress board's count)
    in_flight: int = 0
    peak_in_flight: int = 0
    failed: int = 0  # no answer from the server, or a 5xx
    first_request: float | None = None
    last_request: float | None = None
    last_response: float | None = None


def judge_split(budget: int, configured: int | None) -> tuple[int, int]:
    """(answering, judging): the budget split for a served judge, whose requests would otherwise wait behind a
    whole suite's answers (or fill the server while answers wait). The judge's configured share, else a quarter of
    the budget; at least one each (a budget of one is then exceeded by one)."""
    judging = max(1, min(configured or budget // 4, budget - 1))
    return max(1, budget - judging), judging


def _with_fields(body: bytes, fields: dict) -> bytes:
    """A JSON request body with `fields` set over its own; a body that is no JSON object goes as it came (the server
    answers it, as it would have)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    return json.dumps({**doc, **fields}).encode() if isinstance(doc, dict) else body


class _Unreachable(Exception):
    """A replica gave no answer."""


SUSPECT_PAUSE = 0.25  # seconds between tries of replicas that all failed a request, while the watch judges them


@dataclass
class Replica:
    """One server behind the gate, and what it was sent."""

    url: str
    name: str = "server"  # its server job's name in the run (server-replica-2)
    in_flight: int = 0
    requests: int = 0
    failed: int = 0  # no answer (connection refused or reset, timeout)
    redone: int = 0  # of those, sent again (to another replica, or to this one once it answers)
    alive: bool = True  # False once the watch took it out (its job ended, it refused too long, it hung)
    refused_since: float | None = None  # monotonic: the first request it failed since its last answer (suspect)
    answered_at: float = 0.0  # monotonic: its last answer, whatever the status
    busy_since: float = 0.0  # monotonic: when its requests in flight last went from none to some
    joined: float = field(default_factory=time.time)  # epoch seconds: when it began to take requests

    def waiting_since(self) -> float | None:
        """Since when requests wait on it without an answer (None: nothing in flight)."""
        return max(self.answered_at, self.busy_since) if self.in_flight else None


@dataclass
class Gate:
    """The budget for all benchmarks, spread over the replicas: each request goes to the live one with the fewest in
    flight. A request a replica gives no answer to is sent again: to another replica (this one is suspect and gets
    requests only when no other lives, until it answers or its health check does), or to it again while the watch
    judges it. One error is not a death (a keep-alive connection the server closed, one reset): only the watch takes
    a replica out (`hold`, `drop`), and what it held then is sent again at once: one replica's death costs no
    benchmark anything but those requests' time."""

    replicas: list[Replica]
    budget: int  # 0: not open yet (the server is loading): requests wait
    upstream_headers: dict[str, str] = field(default_factory=dict, repr=False)  # the server's key: never recorded
    token: str = field(default_factory=lambda: tokens.token_urlsafe(32), repr=False)  # the run's harnesses send it
    url: str = ""
    opened: float = field(default_factory=time.time)  # when requests began to go through
    held: int = 0  # requests that arrived before the server was healthy, and waited for it
    failure: str = ""  # the server never became healthy: what waits is answered 502 with this
    returning: int = 0  # replicas whose job Slurm requeued: while one is on its way back, requests wait for it
    decide_seconds: float = 0.0  # how long a request the last replica dropped waits for the watch to judge it (set
    # by the watch: with no watch nobody judges)
    _changed: asyncio.Event | None = None  # set (and replaced) when a replica joins, returns or is given up on
    _ready: asyncio.Event | None = None
    _limit: asyncio.Semaphore | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    traffic: dict[str, Traffic] = field(default_factory=dict)
    in_flight: int = 0
    peak: int = 0
    _area: float = 0.0  # ∫ in_flight dt: the mean is area / busy time
    _busy: float = 0.0
    _since: float = field(default_factory=time.monotonic)
    _sending: dict[int, set] = field(default_factory=dict, repr=False)  # id(replica) → its requests' upstream tasks
    keep: Path | None = None  # a folder: every request body a benchmark sends goes to <keep>/<benchmark>.jsonl
    judge_in_flight: int | None = None  # a served judge's configured share (`judge_split`); None: the run has none
    judged: bool = False  # a benchmark of this run is judged by the served model: its judge gets a share apart
    judge_share: int = 0  # what `judge_split` gave it, once open
    judge_params: dict = field(default_factory=dict)  # fields every judge request is sent with (evaluation.judge)
    _judge_limit: asyncio.Semaphore | None = None

    def _count(self, delta: int) -> None:
        now = time.monotonic()
        if self.in_flight:
            self._area += self.in_flight * (now - self._since)
            self._busy += now - self._since
        self._since, self.in_flight = now, self.in_flight + delta
        self.peak = max(self.peak, self.in_flight)

    @property
    def upstream(self) -> str:
        return self.replicas[0].url if self.replicas else ""

    def open(self, upstreams: dict[str, str], budget: int) -> None:
        """The server is healthy: what waits goes through, `budget` at a time (from any thread)."""
        self._call(self._open, upstreams, budget)

    def fail(self, reason: str) -> None:
        """The server will not become healthy: what waits, and what comes, is answered 502 (from any thread)."""
        self._call(self._fail, reason)

    def _call(self, fn, *args) -> None:
        done = threading.Event()

        def run() -> None:
            fn(*args)
            done.set()

        try:
            self._loop.call_soon_threadsafe(run)  # type: ignore[union-attr]
        except RuntimeError:  # the gate has closed (the suite ended, Ctrl-C): nothing waits any more
            return
        done.wait(10)

    def hold(self, url: str) -> None:
        """The replica at `url` stopped answering and its job may come back (Slurm requeued it, or is asked): no
        request goes there, and requests with no live replica wait for it (from any thread)."""
        self._call(self._hold, url)

    def rejoin(self, url: str, name: str) -> None:
        """A held replica serves again, at `url` (a requeued job starts anew: a new port, maybe a new node)."""
        self._call(self._rejoin, url, name)

    def release(self) -> None:
        """A held replica will not come back: what waits for it is answered (by another replica, or 502)."""
        self._call(self._release)

    def _hold(self, url: str) -> None:
        self.remove(url)
        self._cut(url)
        self.returning += 1
        self._notify()

    def _rejoin(self, url: str, name: str) -> None:
        self.add(url, name)
        self.returning = max(0, self.returning - 1)
        self._notify()

    def _release(self) -> None:
        self.returning = max(0, self.returning - 1)
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _change(self, timeout: float | None = None) -> bool:
        """Until a replica joins, returns or is given up on (True), or `timeout` passes (False)."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)  # type: ignore[union-attr]
            return True
        except asyncio.TimeoutError:
            return False

    def _open(self, upstreams: dict[str, str], budget: int) -> None:
        for name, url in upstreams.items():
            self.add(url, name)
        answering = budget
        if self.judged:
            answering, self.judge_share = judge_split(budget, self.judge_in_flight)
            self._judge_limit = asyncio.Semaphore(self.judge_share)
        self.budget, self._limit, self.opened = budget, asyncio.Semaphore(answering), time.time()
        self._ready.set()  # type: ignore[union-attr]

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self._ready.set()  # type: ignore[union-attr]

    async def _wait_open(self) -> web.Response | None:
        """Hold a request that came before the server was healthy; a 502 if it never will be."""
        if not self._ready.is_set():  # type: ignore[union-attr]
            self.held += 1
            await self._ready.wait()  # type: ignore[union-attr]
        return web.Response(status=502, text=f"Bad Gateway: {self.failure}") if self.failure else None

    def add(self, url: str, name: str = "server") -> None:
        """A (relaunched) replica joins: it takes requests from now on."""
        self.replicas.append(Replica(url.rstrip("/"), name))

    def remove(self, url: str) -> None:
        """A replica found dead (its health checks failed): no more requests go there."""
        for r in self.replicas:
            if r.url == url.rstrip("/"):
                r.alive = False

    def _cut(self, url: str) -> None:
        """What a replica taken out holds is sent again (a hung server would hold it for ever)."""
        for r in self.replicas:
            if r.url == url.rstrip("/"):
                for task in self._sending.get(id(r), ()):
                    task.cancel()

    def seen(self, url: str) -> Replica | None:
        """The live replica at `url` as the gate sees it (the watch reads its answers, refusals and waits)."""
        return next((r for r in self.replicas if r.alive and r.url == url.rstrip("/")), None)

    def cleared(self, url: str) -> None:
        """Its health check answers: a suspect replica takes requests again."""
        for r in self.replicas:
            if r.url == url.rstrip("/"):
                r.refused_since = None

    def drop(self, url: str) -> None:
        """The watch found the replica at `url` dead for good: what waits to judge it is answered (from any
        thread)."""
        self._call(self._drop, url)

    def _drop(self, url: str) -> None:
        self.remove(url)
        self._cut(url)
        self._notify()

    def _pick(self, tried: list[Replica]) -> Replica | None:
        """The live replica with the fewest in flight, one that answers before a suspect one; of equals, the one sent
        the fewest so far: a replica that (re)joined takes the next request that finds it no busier than the others."""
        live = [r for r in self.replicas if r.alive and r not in tried]
        return min(live, key=lambda r: (r.refused_since is not None, r.in_flight, r.requests)) if live else None

    def route(self, endpoint: Endpoint, benchmark: str) -> Endpoint:
        """Where one benchmark sends: the gate, under its name (which the gate counts it by), with the gate's token
        (in the harness's `TOKEN_VAR`, see `harness_env`)."""
        return replace(endpoint, base_url=f"{self.url}/{benchmark}", api_key_env=TOKEN_VAR)

    def answered(self, benchmark: str) -> int:
        """The requests of one benchmark the server answered (2xx) through this gate so far (from any thread)."""
        t = self.traffic.get(benchmark)
        return t.answered if t is not None else 0

    def harness_env(self) -> dict[str, str]:
        """What a harness needs in its environment to be let through."""
        return {TOKEN_VAR: self.token}

    def headers(self) -> dict[str, str]:
        """What a client sends to be let through (the flow's own look through it, tests)."""
        return {"Authorization": f"Bearer {self.token}"}

    def _admits(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.headers.get("Authorization", ""), self.headers()["Authorization"])

    def record(self) -> dict:
        """The figures of this gate: budget, peak and mean requests in flight, per-benchmark traffic."""
        self._count(0)
        return {"upstream": self.upstream, "replicas": [asdict(r) for r in self.replicas],
                "budget": self.budget, **({"judge_share": self.judge_share} if self.judged else {}),
                "opened": self.opened, "closed": time.time(), "held_requests": self.held,
                "peak_in_flight": self.peak, "mean_in_flight": round(self._area / self._busy, 2) if self._busy else 0.0,
                "busy_seconds": round(self._busy, 2),
                "benchmarks": {name: asdict(t) for name, t in self.traffic.items()}}

    async def _forward(self, request: web.Request, session: aiohttp.ClientSession) -> web.StreamResponse:
        if not self._admits(request):  # not one of this run's harnesses: nothing waits, counts or goes upstream
            return web.Response(status=401, text="Unauthorized: this gate serves one evaluation run's harnesses")
        if (refused := await self._wait_open()) is not None:
            return refused
        name, rest = request.match_info["benchmark"], request.match_info["rest"]
        # the gate's token stays here; the endpoint's key, if any, goes upstream instead
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS | {"authorization"}}
        headers.update(self.upstream_headers)
        body = await request.read()
        path = f"/{rest}" + (f"?{request.query_string}" if request.query_string else "")
        if request.method != "POST":  # model lists, health: not generation, not counted
            replica = self._pick([]) or self.replicas[0]
            try:
                return await self._send(session, request.method, replica.url + path, headers, body)
            except _Unreachable as e:
                return web.Response(status=502, text=f"Bad Gateway: {e}")
        t = self.traffic.setdefault(name, Traffic())
        judge = self._judge_limit is not None and name.endswith(JUDGE_ROUTE)
        if judge and self.judge_params:
            body = _with_fields(body, self.judge_params)
        if self.keep is not None:
            self._kept(name, path, body)
        async with self._judge_limit if judge else self._limit:  # type: ignore[union-attr]
            t.requests += 1
            t.first_request = t.first_request or time.time()
            t.last_request = time.time()
            t.in_flight += 1
            t.peak_in_flight = max(t.peak_in_flight, t.in_flight)
            self._count(+1)
            try:
                response = await self._spread(session, path, headers, body)
            finally:
                self._count(-1)
                t.in_flight -= 1
                t.last_response = time.time()
        if response.status >= 500:
            t.failed += 1
        elif response.status < 300:
            t.answered += 1
        return response

    def _kept(self, name: str, path: str, body: bytes) -> None:
        """One request as sent, a JSON line (only with `keep`: a measurement's replay, not a run's record). The file
        is named from the route, made plain: a name never reaches outside the folder."""
        plain = re.sub(r"[^\w-]", "_", name)
        with contextlib.suppress(OSError, ValueError), (self.keep / f"{plain}.jsonl").open("a") as f:  # type: ignore[operator]
            f.write(json.dumps({"path": path, "body": json.loads(body)}) + "\n")

    async def _spread(self, session: aiohttp.ClientSession, path: str, headers: dict, body: bytes) -> web.Response:
        """To the live replica with the fewest in flight; one that gives no answer is suspect and the request goes to
        another. With none live while a requeued one is on its way back, the request waits for it; one that every
        live replica failed is tried again (`decide_seconds`) while the watch judges them."""
        tried: list[Replica] = []
        failed: Replica | None = None  # the replica that failed it last
        error: _Unreachable | None = None
        deadline: float | None = None
        while True:
            replica = self._pick(tried)
            if replica is None:
                if self.returning:
                    await self._change()
                    tried = []
                    continue
                if failed is None or not any(r.alive for r in self.replicas):
                    return web.Response(status=502, text="Bad Gateway: no replica of the server is alive")
                deadline = deadline or time.monotonic() + self.decide_seconds
                if time.monotonic() >= deadline:  # the harness sees an infrastructure failure
                    return web.Response(status=502, text=f"Bad Gateway: {error}")
                await self._change(min(SUSPECT_PAUSE, deadline - time.monotonic()))
                tried = []
                continue
            if failed is not None:
                failed.redone += 1
            tried.append(replica)
            replica.requests += 1
            if not replica.in_flight:
                replica.busy_since = time.monotonic()
            replica.in_flight += 1
            try:
                response = await self._sent(replica, session, "POST", replica.url + path, headers, body)
                replica.answered_at, replica.refused_since = time.monotonic(), None
                return response
            except _Unreachable as e:
                replica.failed += 1
                replica.refused_since = replica.refused_since or time.monotonic()
                failed, error = replica, e
            finally:
                replica.in_flight -= 1

    async def _sent(self, replica: Replica, session: aiohttp.ClientSession, method: str, target: str, headers: dict,
                    body: bytes) -> web.Response:
        """`_send`, as a task the watch can cut (`hold`, `drop`): a cut request gave no answer."""
        task = asyncio.ensure_future(self._send(session, method, target, headers, body))
        sending = self._sending.setdefault(id(replica), set())
        sending.add(task)
        try:
            await asyncio.wait({task})  # returns when the task ends, cancelled included; raises if we are cancelled
        finally:
            sending.discard(task)
            task.cancel()
        if task.cancelled():
            raise _Unreachable(f"{replica.name} was taken out while it held the request")
        return task.result()

    @staticmethod
    async def _send(session: aiohttp.ClientSession, method: str, target: str, headers: dict,
                    body: bytes) -> web.Response:
        """The server's answer; _Unreachable if it gives none (the harness then sees a 502: infrastructure)."""
        try:
            async with session.request(method, target, headers=headers, data=body) as up:
                payload = await up.read()
                keep = {k: v for k, v in up.headers.items() if k.lower() not in _HOP_HEADERS}
                return web.Response(status=up.status, body=payload, headers=keep)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise _Unreachable(f"{type(e).__name__}: {e}") from None


    async def _serve(self, started: threading.Event, stop: asyncio.Event) -> None:
        self._loop, self._ready, self._changed = asyncio.get_running_loop(), asyncio.Event(), asyncio.Event()
        if self.budget:
            self._open({}, self.budget)
        connector = aiohttp.TCPConnector(limit=0)  # the semaphore is the limit
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                         auto_decompress=False) as session:
            app = web.Application(client_max_size=64 * 1024 * 1024)

            async def handle(request: web.Request) -> web.StreamResponse:
                return await self._forward(request, session)

            app.router.add_route("*", "/{benchmark}/{rest:.*}", handle)
            # on close (the suite ended, or Ctrl-C / a cancel) requests still in flight are dropped at once:
            # the server is about to be stopped, and the harnesses with it. A client that goes away (a harness
            # killed or timed out) cancels its handler, which frees its slot and drops the upstream request.
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=CLOSE_SECONDS,
                                   handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://127.0.0.1:{port}"
            started.set()
            try:
                await stop.wait()
            finally:
                await runner.cleanup()


@contextlib.contextmanager
def open_gate(upstreams: str | dict[str, str] | None, budget: int = 0,
              headers: dict[str, str] | None = None, keep: Path | None = None, judged: bool = False,
              judge_in_flight: int | None = None, judge_params: dict | None = None) -> Iterator[Gate]:
    """A gate in front of the server (or its replicas: name → URL) for the duration of the block, on its own event
    loop thread; `headers` go with every request it forwards (a running endpoint's key: the harnesses never hold
    it). Without upstreams it holds what arrives until `Gate.open()` (the server is healthy) or `Gate.fail()`.
    With `keep` (a folder), every request body goes to `<keep>/<benchmark>.jsonl`. `judged`: the served model
    judges some benchmark, whose judge routes get a share of the budget apart (`judge_split`) and are sent with
    `judge_params`."""
    named = {"server": upstreams} if isinstance(upstreams, str) else upstreams or {}
    gate = Gate([], budget, dict(headers or {}), keep=keep, judged=judged, judge_in_flight=judge_in_flight,
                judge_params=dict(judge_params or {}))
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    secrets.remember(gate.token)
    earlier = os.environ.get(TOKEN_VAR)
    os.environ[TOKEN_VAR] = gate.token  # this process asks through it too (is the server behind it alive?)
    for name, url in named.items():
        gate.add(url, name)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(gate._serve(started, stop))
        except BaseException as e:  # noqa: BLE001 - reported to the opener
            failed.append(e)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="in-flight-gate", daemon=True)
    thread.start()
    started.wait(30)
    if failed or not gate.url:
        raise RuntimeError(f"the in-flight gate did not start: {failed[0] if failed else 'no port after 30 s'}")
    try:
        yield gate
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(CLOSE_SECONDS + 5)
        if earlier is None:
            os.environ.pop(TOKEN_VAR, None)
        else:
            os.environ[TOKEN_VAR] = earlier


def append_record(run_dir: Path, record: dict) -> Path:
    """`<run_dir>/in-flight.json`: one gate record per server launch."""
    path = run_dir / RECORD_FILE
    try:
        launches = json.loads(path.read_text())
    except (OSError, ValueError):
        launches = []
    return write_atomic(path, json.dumps([*launches, record], indent=2) + "\n")
