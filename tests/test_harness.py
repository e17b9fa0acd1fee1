"""nemotron.benchmarks.harness: lm-eval's task index read from a file made by lm-eval's own scan, and nemo-evaluator's
memory sampler at 0.5 s; the harnesses' behaviour otherwise unchanged (the e2e test runs the suite through both)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from nemotron.benchmarks import harness

INDEX_CHECK = r"""
import json, sys
from pathlib import Path
from lm_eval.tasks import TaskManager

scan = TaskManager._get_task_and_group
scanned = []
def counted(self, task_dir):
    scanned.append(task_dir)
    return scan(self, task_dir)
TaskManager._get_task_and_group = counted

from nemotron.benchmarks import harness
harness.cache_task_index(Path(sys.argv[1]))
TaskManager()                      # the first: scans and keeps the index
cached = TaskManager()._task_index  # the second: reads it back
custom = TaskManager(include_path=sys.argv[2])._task_index
TaskManager._get_task_and_group = scan
own = TaskManager()._task_index    # lm-eval's own, unpatched
print(json.dumps({"scans": len(scanned), "same": cached == own, "tasks": len(own),
                  "custom": custom.get("nemotron_probe_task"), "in_own": "nemotron_probe_task" in own}))
"""


def test_the_task_index_is_lm_evals_own_scan_kept_and_read_back(tmp_path):
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "probe.yaml").write_text("task: nemotron_probe_task\ndataset_path: json\noutput_type: generate_until\n"
                                       "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n")
    done = subprocess.run([sys.executable, "-c", INDEX_CHECK, str(tmp_path / "home"), str(custom)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # one scan of the built-in tasks (the first TaskManager) and one of the --include_path folder, never cached
    assert found["scans"] == 2 and found["same"] and found["tasks"] > 8000, found
    assert found["custom"] == {"type": "task", "yaml_path": str(custom / "probe.yaml")} and not found["in_own"]
    assert len(list((tmp_path / "home" / harness.INDEX_FOLDER).glob("*.json"))) == 1


def test_an_edited_task_file_changes_the_key(tmp_path):
    task = tmp_path / "tasks" / "t.yaml"
    task.parent.mkdir()
    task.write_text("task: a\n")
    first = harness.task_files_key(str(task.parent))
    (task.parent / "notes.md").write_text("not a task")
    assert harness.task_files_key(str(task.parent)) == first  # only task files count
    task.write_text("task: ab\n")
    assert harness.task_files_key(str(task.parent)) != first
    second = harness.task_files_key(str(task.parent))
    assert harness.task_files_key(str(task.parent), b"another TaskManager") != second


def test_lm_eval_on_the_harness_path_is_lm_evals_cli_with_the_index_cached(tmp_path):
    folder = harness.harness_bin(tmp_path)
    launcher = folder / "lm-eval"
    assert os.access(launcher, os.X_OK) and launcher.read_text().startswith(f"#!{sys.executable}\n")
    assert harness.harness_bin(tmp_path) == folder  # unchanged: not written again
    other = subprocess.run([sys.executable, "-c", "import sys; sys.executable = '/another/venv/bin/python'; "
                            "from nemotron.benchmarks import harness; from pathlib import Path; "
                            "print(harness.harness_bin(Path(sys.argv[1])))", str(tmp_path)],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other != str(folder) and launcher.read_text().startswith(f"#!{sys.executable}\n")  # not overwritten
    env = {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["lm-eval", "--tasks", "no_such_task_anywhere", "--model", "dummy"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Tasks not found: no_such_task_anywhere" in done.stderr, done.stderr[-2000:]
    assert len(list((tmp_path / harness.INDEX_FOLDER).glob("*.json"))) == 1


def test_a_home_that_cannot_hold_the_launcher_leaves_lm_evals_own(tmp_path):
    (tmp_path / "a-file").write_text("")
    assert harness.harness_bin(tmp_path / "a-file" / "home") is None


def test_nemo_evaluators_memory_sampler_runs_every_half_second(monkeypatch):
    from nemo_evaluator.core import evaluate, resources

    monkeypatch.setattr(evaluate, "monitor_memory_usage", resources.monitor_memory_usage)  # undone after the test
    samples = []
    measure = resources.psutil.Process.memory_info
    monkeypatch.setattr(resources.psutil.Process, "memory_info", lambda self: samples.append(self.pid) or measure(self))
    harness._sample_less_often()
    own = threading.get_ident()
    start = time.monotonic()
    returned, metrics = evaluate.monitor_memory_usage(lambda: time.sleep(1.6) or own, interval_ms=100)
    took = time.monotonic() - start
    mine = samples.count(os.getpid()) / 2  # each sample reads this process twice (itself, then its tree)
    assert returned == own and metrics["peak_memory_bytes"] > 0
    assert 3 <= mine <= 5 and took < 1.6 + harness.SAMPLER_MS / 1000 + 0.3, (mine, took)  # 100 ms would be ~16
