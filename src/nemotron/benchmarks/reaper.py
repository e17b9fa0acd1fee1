"""Run a harness so that it cannot outlive the flow: `python -m nemotron.benchmarks.reaper CMD [ARGS...]`.

The flow starts this in a new session and holds the write end of its stdin. When the flow's process
ends in any way — including `kill -9`, which runs no cleanup — the pipe closes, this reads EOF and
SIGKILLs its whole process group: the harness and lm-eval. (A parent-death signal
would reach only the direct child, and fires when the forking *thread* ends, not the process.)
SIGTERM from the flow reaches the group directly, so this process ignores it and waits for the
harness to finish its own shutdown; it exits with the harness's code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m nemotron.benchmarks.reaper CMD [ARGS...]", file=sys.stderr)
        return 2
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # after the fork: the harness keeps its own handler

    def reap_when_orphaned() -> None:
        while os.read(0, 65536):  # the flow never writes; EOF means it is gone (raw fd: no lock at exit)
            pass
        if os.getpgrp() == os.getpid():  # our own group (the flow starts us in a new session): all of it
            os.killpg(0, signal.SIGKILL)
        child.kill()  # started in someone else's group: only what we started

    threading.Thread(target=reap_when_orphaned, daemon=True).start()
    code = child.wait()
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell reports it


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # no interpreter shutdown while the reaping thread blocks in read()
