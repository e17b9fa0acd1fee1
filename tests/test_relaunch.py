"""The relaunch loop (nemotron.serving.relaunch) at unit level: what each launch serves, when it gives up, and what a
launch that never became healthy leaves recorded. The real stack's relaunches: test_e2e, test_flow_faults."""

import pytest

from nemotron.benchmarks.runner import BenchmarkPlan
from nemotron.records.results import BenchmarkResult
from nemotron.serving import relaunch


def plan(name):
    return BenchmarkPlan(name, f"lm-evaluation-harness.{name}", "completions", f"/out/{name}", 60, 0, {})


def died(name):
    return BenchmarkResult(name, "failed", f"/out/{name}", 1.0, error="ServerDisconnectedError",
                           failure="infrastructure")


def test_a_death_relaunches_what_it_cost_until_max_restarts_then_records_them_failed():
    todo, outcomes, said, errors = [plan("a"), plan("b"), plan("c")], {}, [], []
    served = []
    for launch in relaunch.launches(todo, outcomes, 2, said.append, lambda *a: errors.append(a)):
        served.append((launch.number, [p.name for p in launch.todo]))
        launch.lost = {"b": died("b"), "c": died("c")} if launch.number == 1 else {"c": died("c")}
    assert served == [(1, ["a", "b", "c"]), (2, ["b", "c"]), (3, ["c"])]
    assert said[0].startswith("[serve] the server died under b, c: relaunching it (1/2)")
    assert errors[0][0].startswith("the server died %d time(s), more than deployment.max_restarts=%d")
    assert errors[0][1:] == (3, 2, "c") and outcomes == {"c": died("c")}


def test_a_suite_that_loses_nothing_is_served_once():
    launches = []
    for launch in relaunch.launches([plan("a")], {}, 5, print, print):
        launches.append(launch.number)
    assert launches == [1]


def test_a_launch_that_never_came_up_records_the_rest_as_not_run_or_is_the_only_error():
    failure = RuntimeError("server job 7 was not healthy after 20 s.\nits log: ...")
    with pytest.raises(RuntimeError, match="not healthy"):  # nothing finished: the error is all there is
        relaunch.never_came_up(failure, [plan("a")], {}, print)
    done = BenchmarkResult("a", "completed", "/out/a", 3.0)
    outcomes, errors = {"a": done, "b": died("b")}, []
    reason = relaunch.never_came_up(failure, [plan("b"), plan("c")], outcomes, lambda *a: errors.append(a))
    assert reason == "server job 7 was not healthy after 20 s"
    assert outcomes["a"] is done and errors[0][1:] == (reason, 1)
    assert {n: (o.status, o.error, o.attempts) for n, o in outcomes.items() if n != "a"} == {
        "b": ("failed", f"not run: {reason}", 0), "c": ("failed", f"not run: {reason}", 0)}
