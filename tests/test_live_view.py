"""The live view in a real terminal: the CLI runs in a tmux pane (vLLM serving the built-in model), and the pane,
read back with `tmux capture-pane`, shows a row per benchmark whose "answered/total" moves, then the score table."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, hf_home
from tests.test_e2e import SMALL, vllm_processes

pytestmark = pytest.mark.e2e
TASKS = ["hellaswag", "gsm8k"]
LIMIT = "evaluation.nemo_evaluator_config.config.params.limit_samples=6"  # hellaswag 24 requests, gsm8k 6


def capture(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session, "-S", "-200"], capture_output=True,
                          text=True).stdout


def answered(pane: str, bench: str) -> tuple[int, int] | None:
    """The newest row of `bench` in the live table: (answered, total)."""
    rows = re.findall(rf"│ {bench}\s+│ \w+\s+│\s+(\d+)/(\d+) │", pane)
    return (int(rows[-1][0]), int(rows[-1][1])) if rows else None


def test_the_live_table_moves_and_ends_with_the_score_table(tmp_path):
    assert not vllm_processes(), "a vLLM server is already running"
    session = f"nemotron-live-{tmp_path.name}"
    rc = tmp_path / "rc"
    command = shlex.join([sys.executable, "-m", "nemotron.cli", "nano3", "eval", "-c", "local",
                          *(f"-t{t}" for t in TASKS), f"evaluation.output_dir={tmp_path}", *SMALL, LIMIT])
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "45", "-c", str(REPO),
                    "-e", f"HF_HOME={hf_home()}", f"{command}; echo $? > {rc}; sleep 600"], check=True)
    seen: dict[str, set[tuple[int, int]]] = {t: set() for t in [*TASKS, "suite"]}
    try:
        deadline = time.monotonic() + 900
        while not rc.exists() and time.monotonic() < deadline:
            pane = capture(session)
            for t in seen:
                if (row := answered(pane, t)) is not None:
                    seen[t].add(row)
            time.sleep(0.5)
        pane = capture(session)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert rc.exists() and rc.read_text().strip() == "0", pane[-4000:]

    print({t: sorted(s) for t, s in seen.items()}, pane[-3000:])
    assert {total for _, total in seen["hellaswag"]} == {24} and {total for _, total in seen["gsm8k"]} == {6}
    # moving: the suite's row seen at none, part of and all of its 30 requests (a benchmark's own requests may be
    # answered in one batch between two reads of the pane)
    moving = sorted(a for a, total in seen["suite"] if total == 30)
    assert moving[0] == 0 and moving[-1] == 30 and any(0 < a < 30 for a in moving), seen
    # the final board (suite all answered), then the score table below it
    final = pane[pane.rindex("┏"):]
    assert re.search(r"│ hellaswag\s+│ done\s+│\s+24/24 │", final) and re.search(r"│ gsm8k\s+│ done\s+│\s+6/6 │", final)
    assert re.search(r"│ suite\s+│ done\s+│\s+30/30 │", final)
    assert final.index("suite") < final.index("benchmark  ") < final.index("results written to")
    assert re.search(r"hellaswag\s+acc\s+\d\.\d{4}", final)
