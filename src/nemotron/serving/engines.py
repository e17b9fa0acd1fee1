"""What each serving engine runs: its command line, its health path, and where a running one answers.

`deployment.type` picks one; `serving` owns the job's life (submit, wait, watch, cancel) for all of them:
- `vllm`: `vllm serve` (or the config's entry point) with the model, parallelism and port;
- `sglang`: `python -m sglang.launch_server` with the same settings in its own flags;
- `generic`: any OpenAI-compatible server, from a command template with `{checkpoint}`, `{port}`,
  `{served_model_name}`, `{host}`, `{tensor_parallel_size}` and `{data_parallel_size}` (config/megatron.yaml
  serves a Megatron checkpoint with the Megatron in-framework Ray server this way);
- `none`: a server that already runs at `deployment.url`; nothing is launched or stopped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from urllib.parse import urlsplit

from nemotron.config import secrets
from nemotron.errors import ConfigError

DEFAULT_COMMAND = {"vllm": "vllm serve", "sglang": "python -m sglang.launch_server"}
DEFAULT_HEALTH = {"vllm": "/health", "sglang": "/health", "generic": "/health", "none": "/v1/models"}
PLACEHOLDERS = ("checkpoint", "port", "served_model_name", "host", "tensor_parallel_size", "data_parallel_size")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
PORT = '"$PORT"'  # the job script picks the port (or sets the configured one) before it runs the command


def check(dep) -> None:
    """The keys each engine needs and refuses (DeploymentSection's validator); ConfigError names the key."""
    if dep.type == "generic":
        if not dep.command:
            raise ConfigError("deployment.type=generic needs deployment.command: a command template with "
                              f"{{port}} and {', '.join('{' + p + '}' for p in PLACEHOLDERS if p != 'port')}")
        unknown = sorted({m for m in _PLACEHOLDER.findall(dep.command) if m not in PLACEHOLDERS})
        if unknown:
            raise ConfigError(f"deployment.command has the unknown placeholder {{{unknown[0]}}}; valid: "
                              + ", ".join("{" + p + "}" for p in PLACEHOLDERS))
        if "{port}" not in dep.command and not dep.port:
            raise ConfigError("deployment.command must take the port the job picks ({port}), or set deployment.port")
    if dep.type == "none":
        if not dep.url:
            raise ConfigError("deployment.type=none evaluates a server that already runs: set deployment.url, "
                              "e.g. http://host:8000")
        external_url(dep.url)
        if dep.replicas != 1:
            raise ConfigError(f"deployment.replicas={dep.replicas} launches servers; deployment.type=none evaluates "
                              "the one that runs at deployment.url: valid is 1")
    elif dep.url or dep.api_key_env:
        key = "deployment.url" if dep.url else "deployment.api_key_env"
        raise ConfigError(f"{key} is for deployment.type=none (a running endpoint); type {dep.type!r} launches "
                          "its own server")
    if dep.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", dep.api_key_env):
        raise ConfigError(f"deployment.api_key_env={dep.api_key_env!r} is not a variable name")


def external_url(url: str) -> str:
    """`http://host:8000`, `http://host:8000/v1` and `.../v1/` all mean the server's base URL."""
    parts = urlsplit(url)
    if "@" in parts.netloc:  # refused before anything logs or records it
        userinfo = parts.netloc.rpartition("@")[0]
        secrets.remember(userinfo, userinfo.partition(":")[2])
        shown = url.replace(userinfo + "@", "***@", 1)
        raise ConfigError(f"deployment.url={shown!r} carries a user name or password (user:pass@host), which would "
                          "be logged and recorded; put the key in a variable and name it: deployment.api_key_env")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"deployment.url={url!r} is not a server's base URL; valid: http(s)://host[:port][/path]")
    base = url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def api_key(dep) -> str | None:
    """The running endpoint's key, from the variable `deployment.api_key_env` names; ConfigError if it is unset."""
    if not dep.api_key_env:
        return None
    value = os.environ.get(dep.api_key_env)
    if not value:
        raise ConfigError(f"deployment.api_key_env={dep.api_key_env} names a variable that is not set here; export "
                          "it (the endpoint's key) or drop deployment.api_key_env")
    return value


def launches(dep) -> bool:
    return dep.type != "none"


def health_path(dep) -> str:
    return dep.health_path or DEFAULT_HEALTH[dep.type]


def command(dep, model_path: str, revision: str | None = None) -> str:
    """The server's command line for `model_path` (a checkpoint folder or a hub id); the port is `$PORT`."""
    if dep.type == "generic":
        values = {"checkpoint": shlex.quote(model_path), "port": PORT, "host": shlex.quote(dep.host),
                  "served_model_name": shlex.quote(dep.served_model_name),
                  "tensor_parallel_size": str(dep.tensor_parallel_size),
                  "data_parallel_size": str(dep.data_parallel_size)}
        line = _PLACEHOLDER.sub(lambda m: values[m.group(1)], dep.command)
        return " ".join([line, dep.extra_args]).strip()
    if dep.type == "sglang":
        args = ["--model-path", model_path, "--served-model-name", dep.served_model_name, "--host", dep.host,
                "--tp-size", str(dep.tensor_parallel_size), "--dp-size", str(dep.data_parallel_size)]
    else:
        args = ["--model", model_path, "--served-model-name", dep.served_model_name, "--host", dep.host,
                "--tensor-parallel-size", str(dep.tensor_parallel_size),
                "--data-parallel-size", str(dep.data_parallel_size)]
    if revision:
        args += ["--revision", revision]
    base = dep.command or DEFAULT_COMMAND[dep.type]
    return " ".join([base, *map(shlex.quote, args), f"--port {PORT}", dep.extra_args]).strip()


# Flags of the engine's command line that change how requests travel or how many fit, not what the model answers:
# left out of the serving record (and so of the result key). Every other flag is in it, unknown ones included:
# a flag we do not know about may change the scores, and recomputing costs less than a wrong reuse.
CAPACITY_FLAGS = frozenset({
    "port", "host", "api-key", "served-model-name", "data-parallel-size", "dp-size", "max-num-seqs",
    "max-num-batched-tokens", "gpu-memory-utilization", "mem-fraction-static", "swap-space", "uvicorn-log-level",
    "disable-log-requests", "disable-log-stats", "disable-uvicorn-access-log", "enable-log-requests", "log-level",
})


# Server variables that place the engine or size its caches, not what it computes (same reason as above).
CAPACITY_ENV = frozenset({"VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "CUDA_VISIBLE_DEVICES",
                          "OMP_NUM_THREADS", "VLLM_LOGGING_LEVEL", "NCCL_DEBUG",
                          "VLLM_ENABLE_V1_MULTIPROCESSING"})  # how many processes it takes, not what they answer


def flags(extra_args: str) -> dict[str, str]:
    """`--dtype bfloat16 --enforce-eager -q=fp8` → {"dtype": "bfloat16", "enforce-eager": "true", "q": "fp8"};
    a word that follows no flag is kept under its position (it is part of the command all the same)."""
    out: dict[str, str] = {}
    words = shlex.split(extra_args)
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("-") and len(word) > 1:
            name, eq, value = word.lstrip("-").partition("=")
            if not eq:
                nxt = words[i + 1] if i + 1 < len(words) else None
                if nxt is not None and not (nxt.startswith("-") and len(nxt) > 1):
                    value, i = nxt, i + 1
                else:
                    value = "true"
            out[name.replace("_", "-")] = value
        else:
            out[f"arg{i}"] = word
        i += 1
    return out


def dist_version(dist_info: str, package: str) -> str | None:
    """`vllm-0.33.1.dist-info` → `0.33.1`: the version of an installed package, from its metadata folder's name."""
    prefix, suffix = f"{package}-", ".dist-info"
    return dist_info[len(prefix):-len(suffix)] if dist_info.startswith(prefix) and dist_info.endswith(suffix) else None


def served(dep, version: str, image: str | None = None) -> dict[str, str]:
    """What serves the model, as far as it could change a score: the engine, its version (or the container image
    it comes in), its entry point or command template, the model parallelism, every engine flag and variable
    but the capacity ones. The result key and `eval compare`'s like-for-like check both read this record."""
    if not launches(dep):
        return {"engine": "none", "endpoint": f"{external_url(dep.url)} as {dep.served_model_name}"}
    record = {"engine": dep.type, dep.type: version}
    if image:
        record["image"] = image
    if dep.command:
        record["command"] = dep.command
    record["tensor_parallel_size"] = str(dep.tensor_parallel_size)
    record.update({k: v for k, v in flags(dep.extra_args).items() if k not in CAPACITY_FLAGS})
    record.update({f"env.{k}": v for k, v in sorted(dep.env.items()) if k not in CAPACITY_ENV})
    return record


def identity(model_identity: str, serving: dict[str, str]) -> str:
    """What the result key names as the model: the checkpoint and what serves it (another vLLM, dtype or
    quantization is another model as far as the scores go); a running endpoint by where it is and what it calls
    the model (the same reference served elsewhere may be another model)."""
    return f"{model_identity} served by {json.dumps(serving, sort_keys=True)}"


def tokenizer(dep, model_path: str) -> str:
    """Where the checkpoint's tokenizer is (the log-likelihood tasks tokenize on the harness side): the checkpoint
    itself, or `deployment.tokenizer` (a template: `{checkpoint}/tokenizer` for a Megatron checkpoint)."""
    return dep.tokenizer.replace("{checkpoint}", model_path) if dep.tokenizer else model_path
