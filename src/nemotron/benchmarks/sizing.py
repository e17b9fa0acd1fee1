"""How many documents and requests each benchmark will send, before anything is launched.

The count is lm-eval's own: the harness's task loaded through its TaskManager, its documents iterated as
`--limit` (and NVIDIA's `--downsampling_ratio`) select them, and `construct_requests` called per document,
as `build_all_requests` does (without the few-shot contexts, which do not change the count). That is the
"Requests remaining" figure the harness logs once it starts. Loading lm-eval and the datasets takes ~10 s,
so the counts are kept in a file keyed by the harness version and what decides them.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from nemotron.benchmarks import environments, harness
from nemotron.records.results import write_atomic
from nemotron.serving import runtime

TIMEOUT_SECONDS = 300
CACHE_FILE = "request-counts.json"
# harness args that would change the count in ways we do not model: such a benchmark is not sized
_UNMODELLED_ARGS = ("--limit", "--samples", "--tasks", "--include_path")


@dataclass(frozen=True)
class Size:
    """What one benchmark will send: documents evaluated and requests built from them (by request type)."""

    documents: int | None = None
    requests: int | None = None
    by_type: dict[str, int] | None = None
    unknown: str = ""  # why there is no count

    def describe(self) -> str:
        if self.requests is None:
            return f"unknown ({self.unknown})"
        return f"{self.documents:,} documents, {self.requests:,} requests"


def question(params: dict[str, Any]) -> dict[str, Any] | str:
    """What decides a benchmark's count (from its harness params), or why it cannot be counted."""
    extra = params.get("extra") or {}
    if not isinstance(extra, dict):
        return f"extra is {extra!r}, not a mapping"
    args = str(extra.get("args") or "")
    if any(word.split("=", 1)[0] in _UNMODELLED_ARGS for word in args.split()):
        return f"extra.args sets {args!r}"
    return {"task": params.get("task"), "limit": params.get("limit_samples"),
            "downsampling_ratio": extra.get("downsampling_ratio")}


NOT_COUNTED = ("not counted yet: a run counts it as it starts; `--dry-run --count` counts it now, with lm-eval on the "
               "data")


def count(named: dict[str, dict[str, Any]], env: dict[str, str], cache_dir: Path | None = None,
          nice: bool = False, counting: bool = True, harnesses: dict[str, str] | None = None) -> dict[str, Size]:
    """The size of each benchmark (name → harness params), from the cache or one lm-eval subprocess for all
    missing ones; a failure of that process makes those sizes unknown, never an error (this is a preview).
    `nice`: counting while a suite runs yields the CPU to the model load and the harnesses. Not `counting`: the
    cache only, the missing ones unknown. `harnesses`: a benchmark's harness when not lm-eval (not counted)."""
    cache_dir = cache_dir or runtime.home()
    cache_path = cache_dir / CACHE_FILE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    # only lm-eval's tasks are counted: its TaskManager builds the requests
    others = {name: h for name, h in (harnesses or {}).items() if h != environments.IN_PROJECT}
    asked = {name: f"the {others[name]} harness is not counted before it runs" if name in others
             else question(params) for name, params in named.items()}
    keys = {name: _key(q) for name, q in asked.items() if isinstance(q, dict)}
    todo = {keys[n]: asked[n] for n in keys if keys[n] not in cache}
    if not todo:
        counted = {}
    elif counting:
        counted = _run_counter(todo, env, nice, cache_dir)
    else:
        counted = {k: {"unknown": NOT_COUNTED} for k in todo}
    if any("requests" in v for v in counted.values()):
        cache.update({k: v for k, v in counted.items() if "requests" in v})
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)  # whole or not at all: runs may count at once
            write_atomic(cache_path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass
    return {name: Size(unknown=q) if isinstance(q, str) else Size(**(cache.get(keys[name]) or counted[keys[name]]))
            for name, q in asked.items()}


def _run_counter(todo: dict[str, dict[str, Any]], env: dict[str, str], nice: bool,
                 cache_dir: Path) -> dict[str, dict[str, Any]]:
    """key → size (or {"unknown": why}) for every key of `todo`, from one lm-eval subprocess (which reads
    lm-eval's task index from `cache_dir`, as the harnesses do)."""
    try:
        done = subprocess.run([*(["nice", "-n", "10"] if nice else []), sys.executable, "-m",
                               "nemotron.benchmarks.sizing", str(cache_dir)],
                              input=json.dumps(todo), env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_SECONDS)
        found = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
        why = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["lm-eval failed"])[-1][:200]
    except (subprocess.TimeoutExpired, OSError, ValueError, IndexError) as e:
        found, why = {}, f"lm-eval did not count it: {type(e).__name__}"
    return {k: found.get(k) or {"unknown": why or "not counted"} for k in todo}


def total(sizes: dict[str, Size]) -> Size:
    """The suite's size; unknown if one benchmark's is."""
    unknown = [n for n, s in sizes.items() if s.requests is None]
    if unknown:
        return Size(unknown=f"{', '.join(unknown)} not counted")
    return Size(sum(s.documents or 0 for s in sizes.values()), sum(s.requests or 0 for s in sizes.values()))


def _key(q: dict[str, Any]) -> str:
    try:
        version = metadata.version("nvidia-lm-eval")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return hashlib.sha256(json.dumps({"lm-eval": version, **q}, sort_keys=True).encode()).hexdigest()[:16]


# ---- the counting subprocess (lm-eval imported here only) ----

def _leaves(tasks: dict) -> Iterator[Any]:
    for value in tasks.values():
        if isinstance(value, dict):
            yield from _leaves(value)
        elif value is not None:
            yield value


def _count_one(manager: Any, q: dict[str, Any]) -> dict[str, Any]:
    from lm_eval.tasks import get_task_dict

    documents, by_type = 0, {}
    for task in _leaves(get_task_dict([q["task"]], manager)):
        limit = q["limit"]
        if limit is not None:  # lm-eval's get_sample_size: a fraction of the documents, or a number
            limit = int(math.ceil(len(task.eval_docs) * limit)) if limit < 1.0 else int(limit)
        for doc_id, doc in task.doc_iterator(rank=0, limit=limit, world_size=1,
                                             downsampling_ratio=q["downsampling_ratio"]):
            documents += 1
            built = task.construct_requests(doc=doc, ctx="", metadata=(task.config.task, doc_id, task.config.repeats),
                                            apply_chat_template=False, chat_template=None)
            for instance in built if isinstance(built, list) else [built]:
                by_type[instance.request_type] = by_type.get(instance.request_type, 0) + 1
    return asdict(Size(documents, sum(by_type.values()), by_type))


def main() -> None:
    """argv: the cache folder; stdin: {key: question}; last stdout line: {key: size}. lm-eval's own chatter
    goes to stderr."""
    import logging

    logging.disable(logging.WARNING)
    asked = json.loads(sys.stdin.read())
    out = sys.stdout
    sys.stdout = sys.stderr
    from lm_eval.tasks import TaskManager

    harness.cache_task_index(Path(sys.argv[1]))
    manager = TaskManager()
    sizes = {}
    for key, q in asked.items():
        try:
            sizes[key] = _count_one(manager, q)
        except Exception as e:  # noqa: BLE001 - one task that cannot be counted leaves the others
            sizes[key] = {"unknown": f"{type(e).__name__}: {e}"[:200]}
    print(json.dumps(sizes), file=out)


if __name__ == "__main__":
    main()
