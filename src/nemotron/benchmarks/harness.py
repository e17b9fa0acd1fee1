"""The harness's two processes, without the start-up and polling costs that buy nothing on a busy machine.

Each benchmark runs `nemo-evaluator run_eval`, which runs `lm-eval` (found on PATH) in a shell. Measured on
the 2-core machine, per benchmark:
- lm-eval's TaskManager parses all of its ~8,700 task YAML files to index them before loading the one task
  asked for: 2.5 core-s each time, the same index every time;
- nemo-evaluator samples the memory of its whole process tree every 100 ms (psutil walks /proc each time):
  3.5% of a core for as long as the benchmark runs, hours on a large suite.

`python -m nemotron.benchmarks.harness nemo-evaluator ARGS` runs nemo-evaluator's own CLI with the sampler every 0.5 s
(the peak memory it records is as coarse), and `lm-eval` on the harness's PATH is `harness_bin()`'s launcher:
lm-eval's own CLI, with the index of its built-in tasks read from a file made by the same scan, keyed by the
size and modification time of every task file and by the scanning code (so an edited or upgraded task set is
scanned again).
Everything else — what is asked, sent and scored — is the harnesses' own code, unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from nemotron.records.results import write_atomic
from nemotron.serving import runtime

SAMPLER_MS = 500
INDEX_FOLDER = "lm-eval-task-index"


def task_files_key(task_dir: str, scanner: bytes = b"") -> str:
    """A digest of every task file's path, size and modification time under `task_dir` (~0.1 s), and of the
    code that indexes them (`scanner`)."""
    digest = hashlib.sha256(scanner)
    for root, dirs, files in os.walk(task_dir):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".yaml")):
            path = os.path.join(root, name)
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cache_task_index(cache_dir: Path | None = None) -> None:
    """Make lm-eval's TaskManager read the index of its built-in tasks from `cache_dir` (scanning and
    keeping it when missing or stale); any other task folder (`--include_path`) is scanned as before."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    scan = TaskManager._get_task_and_group
    if getattr(scan, "cached", False):
        return
    built_in = os.path.dirname(os.path.abspath(lm_eval.tasks.__file__))
    scanner = Path(lm_eval.tasks.__file__).read_bytes()  # TaskManager's own code: a new version, a new index
    folder = (cache_dir or runtime.home()) / INDEX_FOLDER

    def index(self: TaskManager, task_dir: str) -> dict[str, Any]:
        if os.path.abspath(task_dir) != built_in:
            return scan(self, task_dir)
        path = folder / f"{task_files_key(task_dir, scanner)}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            found = scan(self, task_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(found))  # whole or not at all: harnesses start together
        except OSError:
            pass  # a read-only home: scan each time, as lm-eval does
        return found

    index.cached = True
    TaskManager._get_task_and_group = index


def harness_bin(cache_dir: Path | None = None) -> Path | None:
    """A folder holding `lm-eval`: lm-eval's CLI with the task index cached in `cache_dir`, run by this
    interpreter. Put first on the harness's PATH, it is what nemo-evaluator's command line starts.
    None where it cannot be written (a read-only home): the harness then runs lm-eval's own `lm-eval`."""
    home = cache_dir or runtime.home()
    # one per interpreter: two checkouts (two venvs) on one machine each run their own lm-eval
    launcher = home / "harness-bin" / hashlib.sha256(sys.executable.encode()).hexdigest()[:12] / "lm-eval"
    text = (f"#!{sys.executable}\n# written by nemotron.benchmarks.harness: lm-eval's CLI with its task index cached\n"
            f"import sys\nfrom pathlib import Path\nfrom nemotron.benchmarks.harness import main\n"
            f"sys.exit(main(['lm-eval', *sys.argv[1:]], Path({str(home)!r})))\n")
    try:
        if not (launcher.is_file() and launcher.read_text() == text and os.access(launcher, os.X_OK)):
            launcher.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(launcher, text, mode=0o755)
    except OSError:
        return None
    return launcher.parent


def _sample_less_often() -> None:
    from nemo_evaluator.core import evaluate

    measure = evaluate.monitor_memory_usage

    def monitor(func: Any, *args: Any, interval_ms: int, **kwargs: Any) -> Any:
        return measure(func, *args, interval_ms=max(interval_ms, SAMPLER_MS), **kwargs)

    evaluate.monitor_memory_usage = monitor


def main(argv: list[str], cache_dir: Path | None = None) -> int:
    """`nemo-evaluator ARGS` or `lm-eval ARGS`: that program's own CLI, in this process."""
    program, *args = argv or [""]
    sys.argv = [program, *args]
    if program == "nemo-evaluator":
        _sample_less_often()
        from nemo_evaluator.core.entrypoint import run_eval

        run_eval()
        return 0
    if program == "lm-eval":
        cache_task_index(cache_dir)
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()
        return 0
    print("usage: python -m nemotron.benchmarks.harness nemo-evaluator|lm-eval ARGS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
