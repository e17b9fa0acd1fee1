"""Distinctive secrets for one run of the tool, and the places none of them may reach (issue 27).

A path's test gives its run `Sentinels.env` (and the env.toml, netrc and config entries built here), samples the
harness processes while the run lasts (`watch_harnesses`), and afterwards asks `Sentinels.found_in` for every file
the run wrote (results, job folders, ~/.cache/nemotron) and `found_in_prefect` for the Prefect server's database.
Each value is new per run, so one path's leak is never taken for another's.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import string
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import REPO

# the variables a user's machine (or the team's worker) holds: each name is one the redactor must see as secret
SECRET_VARIABLES = ("WANDB_API_KEY", "HF_TOKEN", "OPENAI_KEY", "GITHUB_PAT", "MY_SERVICE_AUTH")
SHORT = "DB_PASSWORD"  # a secret of 5 characters
SETTINGS = ("NETRC", "NEMOTRON_ENV_FILE", "WANDB_MODE")  # in `env` beside the secrets: where they are, how to run
# a harness's command line: nemotron.benchmarks.harness (and its reaper), run_eval, lm-eval; not the CLI's overrides
# (`evaluation.nemo_evaluator_config...`)
HARNESS = re.compile(rb"nemotron\.benchmarks\.harness|(^|[\s/])(run_eval|lm-eval|lm_eval|nemo-evaluator)(\s|$)")


class Sentinels:
    """The secrets of one run: variables, a netrc, a profile's `env_vars` entry, a `deployment.env` entry."""

    def __init__(self, tag: str):
        folder = Path(tempfile.mkdtemp(prefix=f"sentinels-{tag}-"))  # outside every folder a test scans
        suffix = secrets.token_hex(4)
        self.env = {name: f"sntl-{tag}-{name.lower().replace('_', '')}-{suffix}" for name in SECRET_VARIABLES}
        rng = random.SystemRandom()
        self.env[SHORT] = "".join(rng.choice(string.ascii_letters) for _ in range(4)) + "~"
        self.netrc = f"sntl-{tag}-netrc-{suffix}"
        self.profile_secret = f"sntl-{tag}-envvars-{suffix}"
        self.deployment_env = f"sntl-{tag}-depenv-{suffix}"
        netrc = folder / "netrc"
        netrc.write_text(f"machine api.wandb.ai login user password {self.netrc}\n"
                         f"machine github.com login me password {self.netrc}\n")
        netrc.chmod(0o600)
        self.env["NETRC"] = str(netrc)
        self.env_file = folder / "env.toml"  # the project's profiles, local-slurm-ssh with a secret in env_vars
        example = (REPO / "config" / "env.example.toml").read_text()
        self.env_file.write_text(example.replace(
            "[local-slurm-ssh]\n", f'[local-slurm-ssh]\nenv_vars = {{ SITE_TOKEN = "{self.profile_secret}", '
                                    'WANDB_MODE = "offline" }\n'))  # the cluster's jobs export offline (no hub here)
        self.env["NEMOTRON_ENV_FILE"] = str(self.env_file)
        self.env["WANDB_MODE"] = "offline"  # and so does this side

    def values(self) -> list[str]:
        return [*(v for k, v in self.env.items() if k not in SETTINGS), self.netrc, self.profile_secret,
                self.deployment_env]

    def deployment_env_override(self) -> str:
        return f"deployment.env.SERVICE_PASSWORD={self.deployment_env}"

    def found_in(self, *roots: str | Path, since: float = 0.0) -> list[str]:
        """Files under the roots (links not followed; only those changed since `since`) holding any value."""
        found = []
        for root in roots:
            for folder, _, files in os.walk(root):
                for name in files:
                    path = Path(folder) / name
                    with contextlib.suppress(OSError):
                        if path.is_symlink() or not path.is_file() or path.stat().st_mtime < since:
                            continue
                        data = path.read_bytes()
                        found += [f"{path}: {v}" for v in self.values() if v.encode() in data]
        return found

    def found_in_prefect(self) -> list[str]:
        """Values in the test session's Prefect database, every table and page (flow and task runs, states,
        parameters, logs, artifacts, events), read as bytes: what the server stored, however it stored it."""
        home = Path(os.environ["PREFECT_HOME"])
        assert list(home.glob("*.db")), f"no Prefect database under {home}"
        return self.found_in(home)


class HarnessWatch:
    """Samples the environment and command line of every harness process while a run lasts."""

    def __init__(self, values: list[str]):
        self.values, self.seen, self.found = [v.encode() for v in values], set(), []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.3):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if not HARNESS.search(cmdline.replace(b"\0", b" ")) or int(pid) == os.getpid():
                        continue
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                    self.seen.add(pid)
                    program = " ".join(Path(a.decode(errors="replace")).name for a in cmdline.split(b"\0")[:2])
                    for value in self.values:
                        for where, data in (("environ", environ), ("cmdline", cmdline)):
                            if value in data and (found := (where, program, value.decode())) not in self.found:
                                self.found.append(found)


@contextlib.contextmanager
def watch_harnesses(values: list[str]) -> Iterator[HarnessWatch]:
    """`with watch_harnesses(s.values()) as w: <run>` then `w.seen` (harness processes sampled) and `w.found`:
    (environ or cmdline, the program, the value) for each value seen in a harness process."""
    watch = HarnessWatch(values)
    watch._thread.start()
    try:
        yield watch
    finally:
        watch._stop.set()
        watch._thread.join(timeout=10)
