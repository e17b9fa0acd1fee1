"""The test suite in two lanes that run at once: the tests that use the project's Slurm or its sshd login node, and the
rest.

Run as one session the suite keeps this machine's two cores half busy (51% on average over a CI run, sampled
each minute from /proc/stat): much of its time is waiting (a queued job, a model loading, a server relaunched),
and a lane that waits lets the other run. Each lane is a pytest session of its own (its own Prefect server and
temporary folders, `NEMOTRON_TEST_LANE` set to its name).

The cluster lane runs the tests marked `cluster` (pytest.mark.cluster: a test that submits to the Slurm queue,
reads it, or connects to the login node), and those marked `waits`, to balance the lanes. A test there stops sshd,
and the job guard of tests/conftest.py reads the queue between tests, so no test of the other lane may touch
either. The local lane cannot: its SLURM_CONF is no Slurm config (every Slurm command stops at once) and its `ssh` is a
stand-in that fails, so a test that needs the cluster and is not marked fails there every time, never by chance.
Tests that look for servers left behind look only at their own lane's (tests/helpers.py: `in_this_lane`).

scripts/test.sh runs it (the README's test command, CI's); its arguments go to both lanes' pytest:

    bash scripts/test.sh tests/test_e2e.py -x

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
# lane → the tests it runs (a pytest -m expression). Tests marked `waits` (a timeout, an outage: little CPU) join the
# cluster lane: in CI's figures the local lane held 1,481 of the suite's 2,320 CPU-seconds.
LANES = {"cluster": "cluster or waits", "local": "not (cluster or waits)"}


def lane_env(name: str, work: Path) -> dict[str, str]:
    """The local lane reaches neither Slurm nor the login node: a test that does fails there, every time."""
    env = {**os.environ, "NEMOTRON_TEST_LANE": name}
    if name == "local":
        stand_ins = work / "no-cluster-bin"
        stand_ins.mkdir(exist_ok=True)
        ssh = stand_ins / "ssh"
        ssh.write_text("#!/bin/sh\necho 'ssh: the local test lane has no login node: mark the test cluster' >&2\n"
                       "exit 255\n")
        ssh.chmod(0o755)
        # a missing file would not do: Slurm's commands then look for a controller through DNS, and hang
        no_slurm = work / "no-slurm.conf"
        no_slurm.write_text("TheLocalTestLaneHasNoSlurm=mark_the_test_cluster\n")  # every Slurm command: fatal, at once
        env.update(SLURM_CONF=str(no_slurm), PATH=f"{stand_ins}{os.pathsep}{env.get('PATH', '')}")
    return env


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
    for name, selection in LANES.items():
        log = (work / f"{name}.log").open("w")
        running[name] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={work / name}.xml",
             f"--basetemp={work / name}-tmp", "-m", selection, *sys.argv[1:]],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=lane_env(name, work))
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
        if code not in (0, 5) and counts["failed"] == 0:
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
