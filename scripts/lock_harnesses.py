"""Write the lock of each harness environment: `src/nemotron/benchmarks/locks/<harness>.txt`.

    uv run python scripts/lock_harnesses.py              # every harness with a PyPI package
    uv run python scripts/lock_harnesses.py bfcl tau     # those

A lock pins the harness's package and everything it needs, with nemo-evaluator at the project's own version (the
run config and output format the flow writes and reads), for the project's Python. Two machines that build an
environment from it get the same packages. Re-run it to move a harness to a newer release, and commit the lock.

A harness that needs torch gets PyTorch's CPU build, the one the serving venv has (runtime.TORCH): a harness sends
requests and runs no model, and PyPI's torch brings ~3 GB of CUDA libraries. It comes from where the serving venv's
comes from (the user's pip configuration: a wheel folder, or the PyTorch CPU index when it answers).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from nemotron.benchmarks import environments
from nemotron.serving import provision, runtime
from nemotron.serving.provision import find_uv


def sources() -> list[str]:
    """Where packages come from: the user's pip configuration, and the PyTorch CPU index when it answers."""
    return provision.uv_sources(provision.pip_settings(), extra_index_urls=tuple(
        url for url in (provision.TORCH_CPU_INDEX,) if provision.reachable(url)))


def lock(harness: str, uv: str, where: list[str]) -> str:
    package = environments.PACKAGES[harness]
    wanted = [package, f"nemo-evaluator=={metadata.version('nemo-evaluator')}"]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    pinned = _compile(harness, uv, wanted, python, where)
    if "\ntorch==" in pinned and "+cpu" not in pinned:
        pinned = _compile(harness, uv, [*wanted, f"torch=={runtime.TORCH}"], python, where)
    return (f"# {harness}: {package} and nemo-evaluator {metadata.version('nemo-evaluator')}, for Python {python}\n"
            f"# written by scripts/lock_harnesses.py (uv pip compile); do not edit\n" + pinned)


def _compile(harness: str, uv: str, wanted: list[str], python: str, where: list[str]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "requirements.in").write_text("\n".join(wanted) + "\n")
        done = subprocess.run([uv, "pip", "compile", "--quiet", "--python-version", python, "--no-header",
                               "--index-strategy", "unsafe-best-match", *where, "requirements.in"],
                              cwd=tmp, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{harness} ({wanted[0]}): {done.stderr.strip().splitlines()[-1]}")
    return done.stdout


def main(names: list[str]) -> int:
    uv = find_uv()
    if uv is None:
        print("uv is needed to write the locks", file=sys.stderr)
        return 2
    failed, where = 0, sources()  # looked up once: an index that does not answer costs its timeout
    for harness in names or sorted(set(environments.PACKAGES) - {environments.IN_PROJECT}):
        try:
            text = lock(harness, uv, where)
        except RuntimeError as e:
            print(f"not locked: {e}", file=sys.stderr)
            failed += 1
            continue
        path = environments.LOCKS / f"{harness}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}: "
              f"{environments.pinned(harness)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
