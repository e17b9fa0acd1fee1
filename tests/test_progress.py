"""The progress board: harness lines in, per-benchmark and suite figures out; the plain and live views."""

import io
import re
import time
from collections import Counter

from rich.console import Console

from nemotron.benchmarks import progress
from nemotron.benchmarks.progress import Board

# what a harness writes, as run_eval.log has it (lm-eval's count per request type)
RUNNING = "2026-12-01:02:59:21 INFO     [evaluator:590] Running {kind} requests"
BUILT = "2026-12-01:02:59:21 INFO     [api.model:418] Cached requests: {cached}, Requests remaining: {left}"


def counted(names: list[str], planned: dict | None = None) -> tuple[Board, Counter]:
    """A board counting answers as the gate does (`Gate.answered`: per benchmark, over all its attempts)."""
    answers: Counter = Counter()
    board = Board.of(names, planned)
    board.counting(lambda name: answers[name])
    return board, answers


def test_the_harness_lines_give_total_answers_rate_and_eta():
    board, answers = counted(["hellaswag", "gsm8k"], planned={"hellaswag": 40, "gsm8k": None})
    board.start("hellaswag")
    board.read("hellaswag", BUILT.format(cached=0, left=40))
    began = board.tallies["hellaswag"].began
    answers["hellaswag"] += 10
    rows, suite = board.rows(now=began + 5.0)
    hs, gsm = rows
    assert (hs.state, hs.answered, hs.total) == ("running", 10, 40)
    assert hs.rate == 2.0 and hs.eta == 15.0  # 30 left at 2/s
    assert (gsm.state, gsm.total) == ("waiting", None)
    assert suite.total is None and suite.eta is None  # gsm8k's size is not known yet
    board.plan("gsm8k", 10)
    _, suite = board.rows(now=began + 5.0)
    assert (suite.answered, suite.total, suite.eta) == (10, 50, 20.0)
    assert hs.describe() == "running: 10/40 requests answered · 2.0 req/s · ETA 15s"


def test_a_resumed_benchmark_counts_what_its_cache_replays_but_not_in_its_rate():
    board, answers = counted(["mmlu"])
    board.start("mmlu")
    answers["mmlu"] += 5  # a first attempt, which failed
    board.finish("mmlu", progress.FAILED)
    board.start("mmlu")  # the retry: lm-eval's own cache replays those 5
    board.read("mmlu", RUNNING.format(kind="generate_until"))
    board.read("mmlu", BUILT.format(cached=5, left=5))
    began = board.tallies["mmlu"].began
    answers["mmlu"] += 2  # the server
    (row,), _ = board.rows(now=began + 1.0)
    assert (row.answered, row.total, row.rate) == (7, 10, 2.0)
    board.finish("mmlu", progress.DONE)
    board.counting(lambda name: 0)  # a relaunch's gate counts anew: a finished attempt keeps its figures
    assert board.tallies["mmlu"].served == 2


def test_request_types_add_up_and_an_attempt_starts_over():
    board, answers = counted(["truthfulqa"], planned={"truthfulqa": 34})
    board.start("truthfulqa")
    board.read("truthfulqa", RUNNING.format(kind="loglikelihood"))
    board.read("truthfulqa", BUILT.format(cached=0, left=31))
    (row,), _ = board.rows()
    assert row.total == 34  # the planned count until the generations are built too
    board.read("truthfulqa", RUNNING.format(kind="generate_until"))
    board.read("truthfulqa", BUILT.format(cached=0, left=3))
    answers["truthfulqa"] += 1
    assert board.tallies["truthfulqa"].built == {"loglikelihood": 31, "generate_until": 3}
    # a failed harness prints lm-eval's output again: its counts are not added twice
    for line in (RUNNING.format(kind="loglikelihood"), BUILT.format(cached=0, left=31)):
        board.read("truthfulqa", line)
    (row,), _ = board.rows()
    assert (row.answered, row.total) == (1, 34)
    board.start("truthfulqa")  # a retry
    (row,), _ = board.rows()
    assert (row.state, row.answered, row.total) == ("starting", 0, 34)


def test_finished_benchmarks_count_whole_and_reused_ones_are_left_out_of_the_suite():
    board = Board.of(["a", "b", "c"], planned={"a": 5, "b": 7})
    board.start("a")
    board.read("a", BUILT.format(cached=0, left=5))
    board.finish("a", progress.DONE)
    board.finish("c", progress.REUSED)
    rows, suite = board.rows()
    assert rows[0].answered == 5 and rows[0].percent == 100.0
    assert (suite.answered, suite.total, suite.state) == (5, 12, "running")
    board.finish("b", progress.FAILED)
    _, suite = board.rows()
    assert suite.state == "done" and suite.percent == 100.0


def test_plain_lines_have_no_control_characters_and_the_table_a_row_per_benchmark():
    board, answers = counted(["hellaswag", "adlr_mmlu"], planned={"hellaswag": 40, "adlr_mmlu": 57})
    board.start("hellaswag")
    board.read("hellaswag", BUILT.format(cached=0, left=40))
    answers["hellaswag"] += 1
    lines = progress.plain(board)
    assert lines[0].startswith("[progress] suite running: 1/97 requests answered")
    assert lines[1].startswith("[progress] hellaswag running: 1/40 requests answered")
    assert not any(re.search(r"[\x00-\x1f\x7f]", line) for line in lines)
    out = io.StringIO()
    Console(file=out, width=100).print(progress.table(board))
    text = out.getvalue()
    assert re.search(r"hellaswag\s+│ running\s+│\s+1/40", text) and re.search(r"adlr_mmlu\s+│ waiting\s+│\s+0/57", text)
    assert re.search(r"suite\s+│ running\s+│\s+1/97", text)


def test_watch_says_plain_lines_when_not_a_terminal_and_hands_every_tick_the_rows():
    board = Board.of(["gsm8k"], planned={"gsm8k": 3})
    said, ticks = [], []
    with progress.watch(board, said.append, on_tick=lambda rows, suite: ticks.append(suite), tty=False, tick=0.05):
        board.start("gsm8k")
        board.read("gsm8k", BUILT.format(cached=0, left=3))
        time.sleep(0.3)
        board.finish("gsm8k", progress.DONE)
    assert any("gsm8k running: 0/3" in s for s in said)  # the benchmark started: a line at once
    assert said[-1] == "[progress] suite done: 3/3 requests answered"
    assert ticks[-1].state == "done"


def test_artifact_keys_are_what_prefect_accepts():
    assert progress.artifact_key() == "nano3-eval-progress"
    assert progress.artifact_key("adlr_arc_challenge_llama_25_shot") == \
        "nano3-eval-progress-adlr-arc-challenge-llama-25-shot"


def test_eval_status_lists_the_benchmarks_not_started_with_their_figures():
    """A suite's later benchmarks have no task run until a harness slot frees: status still lists them, from the
    run's record (its plan) and their progress artifacts."""
    from types import SimpleNamespace

    from flows.status import _status

    state = SimpleNamespace(name="Running", message="", is_completed=lambda: False)
    flow_run = SimpleNamespace(name="eval-x", id="1234", state=state, parameters={})
    started = SimpleNamespace(name="adlr_mmlu", tags=["benchmark"], state=state, expected_start_time=1, created=1)
    figures = {progress.artifact_key("adlr_mmlu"): "running: 7/57 requests answered · 0.3 req/s",
               progress.artifact_key("gsm8k"): "waiting: 0/3 requests answered"}
    record = {"benchmarks": ["adlr_mmlu", "hellaswag", "gsm8k"]}
    lines = _status(record, flow_run, [started], figures).splitlines()
    rows = lines[lines.index("benchmarks") + 1:]
    assert rows == [f"  {'adlr_mmlu':<36} Running    running: 7/57 requests answered · 0.3 req/s",
                    f"  {'hellaswag':<36} not started",
                    f"  {'gsm8k':<36} not started waiting: 0/3 requests answered"]
