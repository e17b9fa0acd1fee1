"""A server that dies mid-suite is launched again for the benchmarks its death cost — they run again in their
folders, where answered requests replay from the response cache — at most deployment.max_restarts times. A relaunch
that never becomes healthy ends the suite with what earlier launches finished."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from nemotron.benchmarks.runner import BenchmarkPlan
from nemotron.config import secrets
from nemotron.records.results import BenchmarkResult


@dataclass
class Launch:
    """One launch of the server and the benchmarks it serves; the caller says what the server's death cost."""

    number: int
    todo: list[BenchmarkPlan]
    lost: dict[str, BenchmarkResult] = field(default_factory=dict)


def launches(todo: list[BenchmarkPlan], outcomes: dict[str, BenchmarkResult], max_restarts: int,
             say: Callable[[str], None], error: Callable[..., None]) -> Iterator[Launch]:
    """The first launch, then one per death that cost benchmarks, up to `max_restarts`; past it the lost ones are
    recorded in `outcomes` with the failure each ended on."""
    number = 0
    while todo:
        number += 1
        launch = Launch(number, todo)
        yield launch
        lost = launch.lost
        todo = [p for p in todo if p.name in lost]
        if todo and number > max_restarts:
            error("the server died %d time(s), more than deployment.max_restarts=%d: giving up on %s", number,
                  max_restarts, ", ".join(lost))
            outcomes.update(lost)
            return
        if todo:
            say(f"[serve] the server died under {', '.join(lost)}: relaunching it ({number}/{max_restarts}); they run "
                "again in their folders, where answered requests replay from the response cache")


def never_came_up(failure: BaseException, todo: list[BenchmarkPlan], outcomes: dict[str, BenchmarkResult],
                  error: Callable[..., None]) -> str:
    """A launch that never became healthy: with nothing finished or reused there is only its error (raised);
    otherwise what earlier launches finished stands, the rest fail as not run, and its one-line reason is returned."""
    if not any(o.ok for o in outcomes.values()):
        raise failure
    reason = secrets.mask(str(failure)).splitlines()[0].rstrip(".")
    error("%s; recording the %d benchmark(s) that have a result", reason, sum(o.ok for o in outcomes.values()))
    for p in todo:
        if p.name not in outcomes or not outcomes[p.name].ok:
            outcomes[p.name] = BenchmarkResult(p.name, "failed", p.output_dir, 0.0, error=f"not run: {reason}",
                                               failure="infrastructure", attempts=0)
    return reason
