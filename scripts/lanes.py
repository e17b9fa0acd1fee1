"""The test suite in two lanes that run at once: what uses the project's Slurm and its sshd login node, and the rest.

Run as one session the suite keeps this machine's two cores half busy (51% on average over a CI run, sampled
each minute from /proc/stat): much of its time is waiting (a queued job, a model loading, a server relaunched),
and a lane that waits lets the other run. Each lane is a pytest session of its own (its own Prefect server and
temporary folders, `NEMOTRON_TEST_LANE` set to its name). The cluster lane holds every test file that submits to
the Slurm queue or uses the login node (a test there stops sshd, and the job guard of tests/conftest.py reads the
queue between tests): a new such file goes into CLUSTER below. Tests that look for servers left behind look only
at their own lane's (tests/helpers.py: `in_this_lane`).

    HF_HOME=../shared/hf-home uv run python scripts/lanes.py    # after scripts/test.sh has set the machine up

Not yet the test command CI runs (scripts/test.sh runs one session): it becomes that after three green runs from
fresh clones.

Each lane's output is printed when it ends; then the ten slowest tests of both and one closing line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUSTER = ("test_slurm.py", "test_detached.py", "test_topology.py", "test_scale.py", "test_deployments.py",
           "test_replicas_served.py", "test_engines_served.py", "test_cluster.py", "test_engines.py",
           "test_serving.py", "test_cli.py", "test_profiles.py")


def lanes() -> dict[str, list[str]]:
    files = sorted(p.name for p in (REPO / "tests").glob("test_*.py"))
    missing = set(CLUSTER) - set(files)
    if missing:
        raise SystemExit(f"scripts/lanes.py names test files that do not exist: {sorted(missing)}")
    return {"cluster": [f"tests/{f}" for f in files if f in CLUSTER],
            "local": [f"tests/{f}" for f in files if f not in CLUSTER]}


def outcome(report: Path) -> tuple[dict[str, int], list[tuple[float, str]]]:
    """Counts (passed, failed, skipped) and each test's time, from a lane's JUnit report."""
    counts, times = {"passed": 0, "failed": 0, "skipped": 0}, []
    for case in ET.parse(report).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
        times.append((float(case.get("time", 0)), f"{case.get('classname')}::{case.get('name')}"))
    return counts, times


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="nemotron-lanes-"))
    started, running = time.monotonic(), {}
    for name, files in lanes().items():
        log = (work / f"{name}.log").open("w")
        running[name] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={work / name}.xml",
             f"--basetemp={work / name}-tmp", *files],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NEMOTRON_TEST_LANE": name})
    codes: dict[str, int] = {}
    while running:
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            codes[name] = proc.returncode
            del running[name]
            print(f"\n===== lane {name}: exit {proc.returncode} after {time.monotonic() - started:.0f} s =====",
                  flush=True)
            sys.stdout.write((work / f"{name}.log").read_text())
        time.sleep(1)
    total, times = {"passed": 0, "failed": 0, "skipped": 0}, []
    for name, code in codes.items():
        report = work / f"{name}.xml"
        counts, lane_times = outcome(report) if report.exists() else ({"passed": 0, "failed": 0, "skipped": 0}, [])
        if code != 0 and counts["failed"] == 0:
            counts["failed"] = 1  # the lane failed outside any test (collection, a crash): still a failure
        total = {k: total[k] + counts[k] for k in total}
        times += [(t, f"[{name}] {test}") for t, test in lane_times]
    print(f"\n===== ten slowest tests, {time.monotonic() - started:.0f} s in all =====")
    for seconds, test in sorted(times, reverse=True)[:10]:
        print(f"{seconds:8.2f}s  {test}")
    print(f"lanes: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
