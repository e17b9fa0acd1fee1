"""How far a suite is: per benchmark, the requests answered of those its harness built, their rate, an ETA.

The totals are the harness's own: lm-eval logs "Cached requests: X, Requests remaining: Y" for each request
type once it has built them; until then, the count `sizing` made before the launch. The answers are the
server's, as the in-flight gate counts them per benchmark (`Board.counting`), plus those lm-eval's own cache
replays for a resumed benchmark (its "Cached requests"): those never reach the gate, and are left out of the
rate.

`watch()` shows the board while the suite runs: a live table on a terminal (rich), plain lines otherwise
(a pipe, CI, a Prefect worker), and hands the same rows to a callback (the Prefect artifacts).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from rich.console import Console
from rich.live import Live
from rich.table import Table

_RUNNING = re.compile(r"Running (\w+) requests")
_BUILT = re.compile(r"Cached requests: (\d+), Requests remaining: (\d+)")
WAITING, STARTING, RUNNING, DONE, FAILED, REUSED = "waiting", "starting", "running", "done", "failed", "reused"
FINISHED = (DONE, FAILED, REUSED)


@dataclass
class Tally:
    """One benchmark's current attempt, as its harness reports it."""

    name: str
    planned: int | None = None  # requests counted before the launch (sizing)
    state: str = WAITING
    built: dict[str, int] = field(default_factory=dict)  # per request type: requests its harness built
    cached: dict[str, int] = field(default_factory=dict)  # of those, answered from lm-eval's own cache
    count: Callable[[], int] | None = None  # the gate's count of this benchmark's answers (all its attempts)
    base: int = 0  # that count when this attempt started
    done: int | None = None  # the answers of this attempt once it ended (the gate of a relaunch counts anew)
    began: float | None = None  # when the harness had built its first requests (monotonic)
    _type: str = ""

    def read(self, line: str) -> None:
        """One harness output line. lm-eval's count is kept per request type: a failed run prints its output
        again, and must not count twice."""
        if m := _RUNNING.search(line):
            self._type = m[1]
        elif m := _BUILT.search(line):
            self.built[self._type] = int(m[1]) + int(m[2])
            self.cached[self._type] = int(m[1])
            self.state, self.began = RUNNING, self.began or time.monotonic()

    @property
    def served(self) -> int:
        """What the server answered in this attempt (the rate's figure)."""
        if self.done is not None:
            return self.done
        return self.count() - self.base if self.count is not None else 0

    @property
    def answered(self) -> int:
        return sum(self.cached.values()) + self.served

    @property
    def total(self) -> int | None:
        """The harness's count once it has built its requests, unless the planned one is larger (lm-eval
        builds one request type at a time: truthfulqa's generations come after its log-likelihoods)."""
        if self.built:
            return max(sum(self.built.values()), self.planned or 0)
        return self.planned


@dataclass(frozen=True)
class Row:
    """What is shown for one benchmark (or the suite)."""

    name: str
    state: str
    answered: int
    total: int | None
    rate: float | None  # requests answered by the server per second
    eta: float | None  # seconds

    def describe(self) -> str:
        """One line: `1,204/40,168 requests answered · 12.3 req/s · ETA 54m10s`."""
        of = f"{self.answered:,}/{self.total:,}" if self.total is not None else f"{self.answered:,}/?"
        parts = [f"{self.state}: {of} requests answered"]
        if self.rate:
            parts.append(f"{self.rate:.1f} req/s")
        if self.eta is not None and self.state not in FINISHED:
            parts.append(f"ETA {clock(self.eta)}")
        return " · ".join(parts)

    @property
    def percent(self) -> float:
        if self.state in FINISHED:
            return 100.0
        return min(100.0, 100.0 * self.answered / self.total) if self.total else 0.0


@dataclass
class Board:
    """Every benchmark of a suite. Harness threads write, the view reads: one lock."""

    tallies: dict[str, Tally]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _count: Callable[[str], int] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, names: list[str], planned: dict[str, int | None] | None = None) -> Board:
        return cls({n: Tally(n, (planned or {}).get(n)) for n in names})

    def counting(self, count: Callable[[str], int]) -> None:
        """Where the answers are counted from: the gate of the server launch the harnesses now send through
        (a benchmark's count of answers so far)."""
        with self._lock:
            self._count = count

    def start(self, name: str) -> Tally:
        """A harness starts (an attempt): its counts start over; what earlier attempts answered comes back as
        lm-eval's cache replays."""
        with self._lock:
            old, count = self.tallies[name], self._count
            tally = Tally(name, old.planned, STARTING)
            if count is not None:
                tally.count, tally.base = functools.partial(count, name), count(name)
            self.tallies[name] = tally
            return tally

    def plan(self, name: str, requests: int | None) -> None:
        """The count made before the launch (sizing), for a benchmark whose harness has not reported yet."""
        with self._lock:
            self.tallies[name].planned = requests

    def read(self, name: str, line: str) -> None:
        with self._lock:
            self.tallies[name].read(line)

    def finish(self, name: str, state: str) -> None:
        with self._lock:
            tally = self.tallies[name]
            tally.done, tally.state = tally.served, state

    def rows(self, now: float | None = None) -> tuple[list[Row], Row]:
        """The benchmarks' rows and the suite's: its ETA is the requests left over the server's rate so far."""
        now = now or time.monotonic()
        with self._lock:
            tallies = [replace(t, built=dict(t.built), cached=dict(t.cached)) for t in self.tallies.values()]
        rows = []
        for t in tallies:
            rate = t.served / (now - t.began) if t.began is not None and t.served > 0 and now > t.began else None
            total = t.total
            answered = total if t.state in (DONE, REUSED) and total is not None else t.answered
            left = max(0, total - answered) if total is not None else None
            eta = left / rate if rate and left is not None else None
            rows.append(Row(t.name, t.state, answered, total, rate, eta))
        began = [t.began for t in tallies if t.began is not None]
        served = sum(t.served for t in tallies if t.began is not None)
        rate = served / (now - min(began)) if began and served > 0 and now > min(began) else None
        sent = [r for r in rows if r.state != REUSED]  # a reused benchmark sends nothing
        unknown = any(r.total is None for r in sent if r.state != FAILED)
        total = None if unknown else sum(r.total or 0 for r in sent)
        answered = sum(r.answered for r in sent)
        left = sum(max(0, (r.total or 0) - r.answered) for r in sent if r.state not in FINISHED)
        state = DONE if all(r.state in FINISHED for r in rows) else RUNNING if began else STARTING
        eta = left / rate if rate and not unknown else None
        return rows, Row("suite", state, answered, total, rate, eta)


def artifact_key(benchmark: str | None = None) -> str:
    """The Prefect progress artifact of the suite, or of one benchmark (keys: lowercase letters, digits, dashes)."""
    return "nano3-eval-progress" + (f"-{re.sub(r'[^a-z0-9-]+', '-', benchmark.lower())}" if benchmark else "")


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def table(board: Board) -> Table:
    """The live view: a row per benchmark and the suite's."""
    rows, suite = board.rows()
    t = Table(title="nano3 eval", title_justify="left", expand=False)
    for col, justify in (("benchmark", "left"), ("state", "left"), ("answered", "right"), ("req/s", "right"),
                         ("ETA", "right")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in [*rows, suite]:
        of = f"{r.answered:,}/{r.total:,}" if r.total is not None else f"{r.answered:,}/?"
        eta = clock(r.eta) if r.eta is not None and r.state not in FINISHED else ""
        t.add_row(r.name, r.state, of, f"{r.rate:.1f}" if r.rate else "", eta,
                  style="bold" if r is suite else None, end_section=r is rows[-1])
    return t


def plain(board: Board) -> list[str]:
    """The same figures as lines: the suite's, then each unfinished benchmark's."""
    rows, suite = board.rows()
    return [f"[progress] suite {suite.describe()}",
            *(f"[progress] {r.name} {r.describe()}" for r in rows if r.state in (STARTING, RUNNING))]


@contextlib.contextmanager
def watch(board: Board, say: Callable[[str], None], on_tick: Callable[[list[Row], Row], None] = lambda r, s: None,
          tty: bool | None = None, every: float = 30.0, tick: float = 5.0) -> Iterator[None]:
    """Show the board until the block ends: a live table on a terminal, else `say` plain lines every `every`
    seconds and whenever a benchmark starts or ends; `on_tick` gets the rows every `tick` seconds."""
    tty = sys.stderr.isatty() if tty is None else tty
    stop = threading.Event()

    def loop() -> None:
        said, states = 0.0, None
        while not stop.wait(tick):
            rows, suite = board.rows()
            with contextlib.suppress(Exception):  # the view never fails the suite
                on_tick(rows, suite)
            now = [r.state for r in rows]
            if not tty and (now != states or time.monotonic() - said >= every):
                for line in plain(board):
                    say(line)
                said, states = time.monotonic(), now

    thread = threading.Thread(target=loop, name="progress", daemon=True)
    with _live(board) if tty else contextlib.nullcontext():
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(10)
    rows, suite = board.rows()
    with contextlib.suppress(Exception):
        on_tick(rows, suite)
    if not tty:
        say(f"[progress] suite {suite.describe()}")


@contextlib.contextmanager
def _live(board: Board) -> Iterator[None]:
    """A rich Live table on stderr. Log lines (Prefect's console handler holds its own rich console) are sent
    through the live console meanwhile, so they print above the table instead of through it."""
    console = Console(stderr=True)
    handlers = [h for h in _all_handlers() if isinstance(getattr(h, "console", None), Console)
                and getattr(h.console, "is_terminal", False)]
    kept = [h.console for h in handlers]
    with Live(console=console, get_renderable=lambda: table(board), refresh_per_second=2, transient=False):
        for h in handlers:
            h.console = console
        try:
            yield
        finally:
            for h, c in zip(handlers, kept, strict=True):
                h.console = c


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    return list({id(h): h for lg in loggers for h in lg.handlers}.values())
