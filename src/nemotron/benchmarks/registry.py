"""The task registry of nemo-evaluator-launcher, and the datasets each task reads.

Task names, harnesses, endpoint types and harness defaults come from the launcher's packaged
`all_tasks_irs.yaml`, read directly: importing the launcher costs ~5 s and reconfigures logging,
and dry runs must stay fast. The lookup follows the launcher's own rule (`get_task_from_mapping`):
a bare name must be unique across harnesses, else `harness.task` is required.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nemotron.errors import ConfigError


@dataclass(frozen=True)
class TaskInfo:
    name: str
    harness: str
    endpoint_type: str
    defaults: dict[str, Any] = field(repr=False, hash=False, compare=False)

    @property
    def qualified(self) -> str:
        return f"{self.harness}.{self.name}"

    @property
    def harness_task(self) -> str:
        """The harness's own task name (adlr_mmlu → mmlu_str)."""
        return self.defaults.get("config", {}).get("params", {}).get("task") or self.name

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What the endpoint must support (nemo-evaluator's names: logprobs, tools, image_url...)."""
        return tuple(self.defaults.get("config", {}).get("required_capabilities") or ())

    @property
    def needs_logprobs(self) -> bool:
        """Log-likelihood tasks: they need echo+logprobs and a tokenizer on the client side."""
        return "logprobs" in self.capabilities


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {name} is not installed; run `uv sync`")
    return Path(spec.submodule_search_locations[0])


@functools.cache
def capability_payloads() -> dict[str, dict[str, Any]]:
    """nemo-evaluator's probe request per capability (logprobs, tools, ...), read from its module
    file: importing the package would reconfigure the root logger of the flow's process."""
    path = _package_dir("nemo_evaluator") / "api" / "capabilities.py"
    spec = importlib.util.spec_from_file_location("nemo_evaluator_capabilities", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: dict(c.payload) for name, c in module.BENCHMARK_CAPABILITIES.items()}


@functools.cache
def tasks() -> dict[tuple[str, str], TaskInfo]:
    path = _package_dir("nemo_evaluator_launcher") / "resources" / "all_tasks_irs.yaml"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(path.read_text(), Loader=loader)
    out: dict[tuple[str, str], TaskInfo] = {}
    for t in data["tasks"]:
        defaults = t.get("defaults") or {}
        endpoint = (defaults.get("config", {}).get("supported_endpoint_types") or ["chat"])[0]
        out.setdefault((t["harness"], t["name"]), TaskInfo(t["name"], t["harness"], endpoint, defaults))
    return out


def lookup(query: str) -> TaskInfo:
    """`hellaswag` or `lm-evaluation-harness.hellaswag` → its registry entry; ConfigError otherwise."""
    registry = tasks()
    if query.count(".") == 1:
        hit = registry.get(tuple(query.split(".")))  # type: ignore[arg-type]
        matches = [hit] if hit else []
    else:
        matches = [info for (_, name), info in registry.items() if name == query]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"task {query!r} exists in several harnesses; use one of: "
                          + ", ".join(m.qualified for m in matches))
    raise ConfigError(f"unknown task {query!r}; valid tasks: {', '.join(valid_names())}")


def valid_names() -> list[str]:
    """Every name `-t` accepts: bare names that are unique, else harness.task."""
    registry = tasks()
    counts: dict[str, int] = {}
    for _, name in registry:
        counts[name] = counts.get(name, 0) + 1
    return sorted(name if counts[name] == 1 else f"{h}.{name}" for h, name in registry)


# --- datasets: which Hugging Face datasets an lm-eval task reads --------------------------------

_KEYS = re.compile(r"^\"?(task|tag|group|dataset_path|dataset_name|include)\"?:[ \t]*(.*)$", re.M)


def _scalar(v: str) -> str:
    v = v.split(" #")[0].strip().strip("'\"")
    return "" if v in ("null", "~") else v


def _list_after(text: str, key: str) -> list[str]:
    """Items of a top-level YAML list `key:` followed by `  - item` (or `  - task: item`) lines."""
    m = re.search(rf"^{key}:[ \t]*\n((?:[ \t]*-.*\n|[ \t]+[a-z_]+:.*\n)+)", text + "\n", re.M)
    if not m:
        return []
    return [_scalar(x) for x in re.findall(r"^[ \t]*-[ \t]+(?:task:[ \t]*)?([^\s:#][^\s#]*)[ \t]*$", m.group(1), re.M)]


@functools.cache
def _lm_eval_texts() -> dict[Path, str]:
    root = _package_dir("lm_eval") / "tasks"
    return {p: p.read_text(errors="ignore") for p in root.rglob("*") if "yaml" in p.name and p.is_file()}


@functools.cache
def _keys(path: Path) -> dict[str, Any]:
    text = _lm_eval_texts().get(path, "")
    keys: dict[str, Any] = {}
    for k, v in _KEYS.findall(text):
        keys.setdefault(k, _scalar(v))
    keys["tags"] = [keys["tag"]] if keys.get("tag") else _list_after(text, "tag")
    keys["members"] = _list_after(text, "task") if keys.get("group") and not keys.get("task") else []
    return keys


def _inherited(path: Path, key: str, depth: int = 0) -> str:
    keys = _keys(path)
    if keys.get(key) or not keys.get("include") or depth > 5:
        return keys.get(key) or ""
    return _inherited((path.parent / keys["include"]).resolve(), key, depth + 1)


def datasets_for(harness_task: str) -> list[dict[str, str]]:
    """The HF datasets (path, config name) that an lm-eval task, group or tag reads.

    Reads lm-eval's task YAMLs as text (a full parse of ~9k files takes seconds) and follows
    groups, tags and `include:` templates from the name down to the leaf tasks.
    """
    texts = _lm_eval_texts()
    out: list[dict[str, str]] = []
    stack, seen = [harness_task], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for path in (p for p, t in texts.items() if name in t and p.suffix == ".yaml"):
            keys = _keys(path)
            if keys.get("group") == name:
                stack.extend(keys["members"])
            elif keys.get("task") == name:
                ds = {"path": _inherited(path, "dataset_path"), "name": _inherited(path, "dataset_name")}
                if ds["path"] and ds not in out:
                    out.append(ds)
            elif name in keys["tags"] and keys.get("task"):
                stack.append(keys["task"])
    return out


def missing_offline(harness_task: str, hf_home: Path) -> list[str]:
    """Datasets a task needs that an offline HF cache does not hold (`datasets`' arrow cache layout)."""
    missing = []
    for ds in datasets_for(harness_task):
        folder = hf_home / "datasets" / ds["path"].replace("/", "___")
        config = folder / (ds["name"] or "default")
        if not (config.is_dir() and any(config.iterdir())):
            label = ds["path"] + (f" ({ds['name']})" if ds["name"] else "")
            if label not in missing:
                missing.append(label)
    return missing
