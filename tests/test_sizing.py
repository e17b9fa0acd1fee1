"""Counting a benchmark's documents and requests before launching: lm-eval's own count, cached."""

import json
import time

from helpers import hf_home

from nemotron.benchmarks import runner, sizing
from nemotron.serving import runtime


def params(task: str, limit=None, **extra) -> dict:
    return {"task": task, "limit_samples": limit, "extra": extra}


def test_lm_eval_counts_requests_per_document_and_the_count_is_kept(tmp_path):
    env = runner.harness_env(runtime.writable_hf_home(hf_home(), say=print), offline=True)
    asked = {"hellaswag": params("hellaswag", 3), "arc_challenge": params("arc_challenge", 0.001),
             "gsm8k": params("gsm8k", 3), "nosuch": params("no_such_task", 3)}
    sizes = sizing.count(asked, env, cache_dir=tmp_path)
    assert (sizes["hellaswag"].documents, sizes["hellaswag"].requests) == (3, 12)  # 4 endings each
    assert sizes["hellaswag"].by_type == {"loglikelihood": 12}
    assert sizes["arc_challenge"].documents == 2  # ceil(1172 × 0.001), as lm-eval takes a fraction
    assert sizes["arc_challenge"].requests == 8  # the first two questions have 4 choices each
    assert (sizes["gsm8k"].documents, sizes["gsm8k"].requests, sizes["gsm8k"].by_type) == (3, 3, {"generate_until": 3})
    assert sizes["nosuch"].requests is None and "no_such_task" in sizes["nosuch"].unknown
    assert sizing.total(sizes).requests is None
    assert sizing.total({k: v for k, v in sizes.items() if k != "nosuch"}).describe() == "8 documents, 23 requests"

    # kept: the second count starts no lm-eval (an environment without PATH could not)
    kept = json.loads((tmp_path / sizing.CACHE_FILE).read_text())
    assert len(kept) == 3  # what could not be counted is not kept
    start = time.monotonic()
    again = sizing.count({k: v for k, v in asked.items() if k != "nosuch"}, {}, cache_dir=tmp_path)
    assert time.monotonic() - start < 1.0
    assert again == {k: v for k, v in sizes.items() if k != "nosuch"}


def test_what_cannot_be_counted_says_why_and_fails_nothing(tmp_path):
    empty = {"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    sizes = sizing.count({"a": params("hellaswag", 3, args="--limit 5"), "b": params("gsm8k", 2)}, empty,
                         cache_dir=tmp_path)
    assert sizes["a"].unknown == "extra.args sets '--limit 5'"
    assert sizes["b"].requests is None and "gsm8k" in sizes["b"].unknown  # not in that (empty) offline cache
    assert sizes["b"].describe().startswith("unknown (")
