"""deployment.replicas: one model served by N servers behind the gate, and kept at N while the suite runs.

Each replica is one `serving.serve()` held open by a thread of its own, so the N jobs load at once and one of them
can be stopped and relaunched while the others keep serving. The watch judges each replica by what it does (`verdict`):
one that refuses connections (or fails requests) for longer than a grace period, or answers nothing for
`deployment.hang_timeout` while requests wait on it (hung), leaves the gate; a slow health check while it answers
requests, or one failed request, is not a death. If
Slurm requeued its job (a preemption, a node failure), the job is waited for and joins the gate again where it
serves anew, while requests wait in the gate: not a death, no relaunch. A replica that died is, while another
replica serves, relaunched in place and joins the gate again once healthy: no benchmark notices but by the requests
the gate sends again. Only when no replica serves or returns is the suite told (`died`): the flow then relaunches
the whole set, as it does a single server (`replicas: 1` takes that path alone).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

from nemotron.errors import ServeError
from nemotron.serving import gate as gates
from nemotron.serving.endpoints import OK, REFUSED, SLOW, UNHEALTHY, Endpoint, probe, reported_version
from nemotron.serving.gate import Gate
from nemotron.serving.jobs import FINISHED, REQUEUE_GRACE_SECONDS, REQUEUED_STATES, ServerHandle

PROBE_SECONDS = 5.0  # a health check answered later is SLOW: no death, a hang only if nothing else answers
STOP_SECONDS = 60.0  # each replica's job is cancelled and its log fetched (serving.STOP_GRACE_SECONDS and more)

# serving.serve with the deployment bound: called with the replica's name, its stop event and its `say`
Launch = Callable[..., AbstractContextManager]


def names(count: int) -> list[str]:
    """One server is `server` (server.json, server.log); replicas are server-replica-1 … -N."""
    return ["server"] if count == 1 else [f"server-replica-{i}" for i in range(1, count + 1)]


@dataclass
class Look:
    """What the watch saw of one replica over its looks (monotonic seconds)."""

    failing_since: float | None = None  # its health check refused the connection or answered an error since
    quiet_since: float | None = None  # its health check answered nothing in time since


def verdict(health: str, seen: gates.Replica | None, look: Look, now: float, grace: float, hang: float) -> str | None:
    """None while the replica serves; else what it did instead, and it leaves the gate. Judged by what it does:
    refusing (its health check, or the gate's requests) for `grace` with no answer since is a death; answering
    nothing for `hang` while requests wait on it, or a health check that answers nothing for `hang`, is a hang.
    A slow health check while requests are answered, or one failed request, is neither."""
    if seen is None:
        return "was taken out of the gate"
    if look.failing_since is not None and seen.answered_at > look.failing_since:  # it answered since
        look.failing_since = None
    if look.quiet_since is not None and seen.answered_at > look.quiet_since:
        look.quiet_since = None
    if health == OK:
        look.failing_since = look.quiet_since = None
    elif health == SLOW:
        look.quiet_since = look.quiet_since or now
    else:
        look.failing_since = look.failing_since or now
    since = min((t for t in (look.failing_since, seen.refused_since) if t is not None), default=None)
    if since is not None and now - since >= grace:
        what = {REFUSED: "refused connections", UNHEALTHY: "answered its health check with an error"}.get(
            health, "gave no answer to requests")
        return f"{what} for {now - since:.0f} s"
    waiting = seen.waiting_since()
    if waiting is not None and now - waiting >= hang:
        return (f"answered none of its {seen.in_flight} requests in flight for {now - waiting:.0f} s: hung "
                "(deployment.hang_timeout)")
    if look.quiet_since is not None and now - look.quiet_since >= hang:
        return f"answered nothing, its health check included, for {now - look.quiet_since:.0f} s: hung " \
               "(deployment.hang_timeout)"
    return None


def _job_gone(replica: Replica) -> str | None:
    """Why a replica that refuses is out before its grace: its job has ended, or Slurm put it back in its queue."""
    job = replica.handle.job if replica.handle else None
    state = job.state() if job is not None else None
    if state in FINISHED or state in REQUEUED_STATES:
        return f"refused connections and its job is {state}"
    return None


class Replica:
    """One server, held open by its thread from launch until `stop()`."""

    def __init__(self, name: str, launch: Launch, say: Callable[[str], None],
                 on_running: Callable[[], None] = lambda: None):
        self.name = name
        self._on_running = on_running
        self.handle: ServerHandle | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()  # healthy, or failed to become so
        self.returned: Endpoint | None = None  # its new endpoint once its requeued job serves again (`follow`)
        self.back = threading.Event()  # `follow` has its answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(launch, say), name=f"serve-{name}", daemon=True)
        self._thread.start()

    def _hold(self, launch: Launch, say: Callable[[str], None]) -> None:
        def said(message: str) -> None:  # "[serve] ..." names the replica when there are several
            say(f"[serve {self.name}]{message[7:]}" if self.name != "server" and message.startswith("[serve]")
                else message)

        try:
            with launch(name=self.name, stop=self._stop, say=said, on_running=self._on_running) as handle:
                self.handle = handle
                self.ready.set()
                self._stop.wait()
        except BaseException as e:  # noqa: BLE001 - reported by whoever waits for the replica
            self.error = e
        finally:
            self.ready.set()

    @property
    def endpoint(self) -> Endpoint | None:
        return self.handle.endpoint if self.handle else None

    @property
    def job_id(self) -> str | None:
        return self.handle.job.job_id if self.handle and self.handle.job else None

    def follow(self) -> None:
        """In a thread of its own: whether its job was requeued, and then until it serves again (`returned`: its new
        endpoint, or None when it did not come back; `back` is set either way)."""
        self.returned, self.back = None, threading.Event()

        def run() -> None:
            try:
                endpoint = self.handle.follow() if self.handle else None
                if endpoint is not None:
                    self.handle = replace(self.handle, endpoint=endpoint)
                    self.returned = endpoint
            except BaseException as e:  # noqa: BLE001 - it did not come back: a death, reported by the watch
                self.error = e
            finally:
                self.back.set()

        threading.Thread(target=run, name=f"follow-{self.name}", daemon=True).start()

    def stop(self, wait: bool = True) -> None:
        """Cancel the job (while it starts, too); `wait`: until it is gone and its log fetched."""
        self._stop.set()
        if wait:
            self._thread.join(STOP_SECONDS)


class Fleet:
    """The replicas of one launch of the model, and the watch that keeps them serving."""

    def __init__(self, launch: Launch, count: int, say: Callable[[str], None], restarts: int, interval: float,
                 misses: int = 3, hang: float = 600.0):
        self.launch, self.count, self.say = launch, count, say
        self.restarts, self.interval, self.misses, self.hang = restarts, interval, misses, hang
        self.relaunched = 0
        self.serving: list[Replica] = []  # launched, and (once ready) healthy and in the gate
        self._starting: list[Replica] = []  # relaunched, not yet healthy
        self._returning: list[Replica] = []  # stopped answering: is its job requeued, and when does it serve again?
        self._gone: list[Replica] = []  # dead: being stopped
        self.loading = threading.Event()  # a server process runs: its model loads
        self.died = threading.Event()  # no replica serves any more (set by the watch)
        self._done = threading.Event()
        self._watch: threading.Thread | None = None
        self.budget: int | None = None  # requests at once through the gate, once it is open
        self.first: ServerHandle | None = None  # the first replica's server when the gate opened (the record's)
        self.opened_to: dict[str, str] = {}  # the replicas the gate opened to: name → URL
        self.engine_version: str | None = None  # what the first server reports it runs (GET /version), once up
        self.error: BaseException | None = None  # why the servers never became healthy

    def start(self) -> None:
        """Launch every replica at once (each job then waits in its queue, starts, loads), without waiting."""
        if self.count > 1:
            self.say(f"[serve] launching {self.count} replicas of the model (deployment.replicas)")
        self.serving = [Replica(name, self.launch, self.say, self.loading.set) for name in names(self.count)]

    def wait_loading(self) -> None:
        """Until a server process runs (the queue wait is over), or every replica is ready; raise a failure."""
        while not self.loading.wait(1.0) and not all(r.ready.is_set() for r in self.serving):
            self._raise_failure()
        self._raise_failure()

    def wait_ready(self) -> None:
        """Until every replica is healthy; raise the first failure."""
        while not all(r.ready.wait(1.0) for r in self.serving):  # a timeout keeps Ctrl-C deliverable
            self._raise_failure()
        self._raise_failure()

    def open_when_ready(self, gate: Gate, budget_of: Callable[[Fleet], int]) -> None:
        """In a thread of its own: once every replica is healthy, open the gate to them with `budget_of(fleet)` and
        watch them. The harnesses start meanwhile (their requests wait in the gate); if the servers never become
        healthy, what waits is answered 502 and `died` is set, and `error` says why."""
        def run() -> None:
            try:
                self.wait_ready()
                self.first, self.opened_to = self.handle, self.urls()
                self.budget = budget_of(self)
                self.engine_version = reported_version(self.first.endpoint)  # before any harness can end
                gate.open(self.opened_to, self.budget)
                self.watch(gate)
            except BaseException as e:  # noqa: BLE001 - the flow raises it once its harnesses have ended
                self.error = e
                gate.fail(f"the model server did not become healthy: {str(e).splitlines()[0]}")
                self.died.set()

        threading.Thread(target=run, name="gate-opener", daemon=True).start()

    def _raise_failure(self) -> None:
        failed = next((r.error for r in self.serving if r.error is not None), None)
        if failed is not None:
            raise failed

    @property
    def handle(self) -> ServerHandle:
        """The first replica's server: the command, model id, health path and key are the same for all."""
        return self.serving[0].handle  # type: ignore[return-value]

    def urls(self) -> dict[str, str]:
        return {r.name: r.endpoint.base_url for r in self.serving if r.endpoint}

    def alive(self) -> bool:
        """Some replica serves, or is on its way back, as the watch judges them (the flow asks after an
        infrastructure failure: a slow health check is no death)."""
        return bool(self._returning) or bool(self.serving)

    def watch(self, gate: Gate) -> None:
        """Watch the healthy replicas until `stop()`; `died` is set once none serves or returns."""
        looks: dict[int, Look] = {}
        grace = self.interval * self.misses
        gate.decide_seconds = grace + self.interval + REQUEUE_GRACE_SECONDS + 5

        def loop() -> None:
            while not self._done.wait(self.interval):
                for replica in list(self.serving):
                    url = replica.endpoint.base_url
                    health = probe(replica.endpoint.health_url, replica.endpoint.headers(),
                                   timeout=min(PROBE_SECONDS, max(1.0, self.interval)))
                    if health == OK:
                        gate.cleared(url)
                    seen, look = gate.seen(url), looks.setdefault(id(replica), Look())
                    why = verdict(health, seen, look, time.monotonic(), grace, self.hang)
                    if why is None and (look.failing_since or (seen and seen.refused_since)):
                        why = _job_gone(replica)  # no need to wait out the grace for a job that has ended
                    if why is not None:
                        looks.pop(id(replica), None)
                        self.say(f"[serve] {replica.name} (job {replica.job_id}) {why}")
                        self._stopped_answering(replica, gate)
                for replica in [r for r in self._returning if r.back.is_set()]:
                    self._returning.remove(replica)
                    self._returned(replica, gate)
                for replica in [r for r in self._starting if r.ready.is_set()]:
                    self._starting.remove(replica)
                    self._joined(replica, gate)
                if not self.serving and not self._returning:
                    self.died.set()
                    return

        self._watch = threading.Thread(target=loop, name="replica-watch", daemon=True)
        self._watch.start()

    def _stopped_answering(self, replica: Replica, gate: Gate) -> None:
        """Out of the gate; its job is asked whether Slurm requeued it (requests wait for it meanwhile)."""
        self.serving.remove(replica)
        if replica.handle is None or replica.handle.job is None or not replica.handle.job.target.slurm:
            gate.drop(replica.endpoint.base_url)
            self._lost(replica, gate)
            return
        gate.hold(replica.endpoint.base_url)
        self._returning.append(replica)
        replica.follow()

    def _returned(self, replica: Replica, gate: Gate) -> None:
        if replica.returned is None:  # not requeued, or never healthy again: it died
            gate.release()
            if replica.error is not None:
                self.say(f"[serve] {replica.name} (job {replica.job_id}) did not serve again: "
                         f"{str(replica.error).splitlines()[0]}")
            self._lost(replica, gate)
            return
        gate.rejoin(replica.returned.base_url, replica.name)
        self.serving.append(replica)
        self.say(f"[serve] {replica.name} serves again (job {replica.job_id}, requeued: not a relaunch) at "
                 f"{replica.returned.base_url}")

    def _lost(self, replica: Replica, gate: Gate) -> None:
        """A replica died: relaunched in place while another serves and restarts remain."""
        replica.stop(wait=False)  # its job is cancelled and its log fetched in its own thread
        self._gone.append(replica)
        others = ", ".join(r.name for r in self.serving) + (" serves" if len(self.serving) == 1 else " serve")
        if not self.serving:
            return  # the suite is told: the flow relaunches the set (or gives up), as for one server
        if self.relaunched >= self.restarts:
            self.say(f"[serve] {replica.name} died (job {replica.job_id}); not relaunched: deployment.max_restarts="
                     f"{self.restarts} reached; {others} on")
            return
        self.say(f"[serve] {replica.name} died (job {replica.job_id}): relaunching it ({self.relaunched + 1}/"
                 f"{self.restarts}) while {others}; its requests in flight were sent there")
        self._relaunch(replica.name)

    def _relaunch(self, name: str) -> None:
        self.relaunched += 1
        self._starting.append(Replica(name, self.launch, self.say))

    def _joined(self, replica: Replica, gate: Gate) -> None:
        if replica.error is not None or replica.endpoint is None:
            self.say(f"[serve] relaunching {replica.name} failed: {replica.error}")
            self._gone.append(replica)
            if self.relaunched < self.restarts and self.serving:
                self._relaunch(replica.name)
            return
        gate.add(replica.endpoint.base_url, replica.name)
        self.serving.append(replica)
        self.say(f"[serve] {replica.name} serves again (job {replica.job_id}) at {replica.endpoint.base_url}")

    def stop(self) -> None:
        """Every job cancelled, in parallel: serving, starting, and the dead ones still being stopped."""
        self._done.set()
        if self._watch is not None:
            self._watch.join(self.interval + 10)
        everyone = [*self.serving, *self._starting, *self._returning, *self._gone]
        for replica in everyone:
            replica.stop(wait=False)
        deadline = time.monotonic() + STOP_SECONDS
        for replica in everyone:
            replica._thread.join(max(0.0, deadline - time.monotonic()))


@contextlib.contextmanager
def serve(launch: Launch, count: int, say: Callable[[str], None], restarts: int, interval: float,
          hang: float = 600.0) -> Iterator[Fleet]:
    """`count` servers of the model, launched, for the duration of the block (`wait_loading`, `wait_ready`); every
    job cancelled after it."""
    if count < 1:
        raise ServeError(f"deployment.replicas={count}: at least one server is needed")
    fleet = Fleet(launch, count, say, restarts, interval, hang=hang)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()
