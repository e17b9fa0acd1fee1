"""Two evaluations of the built-in model with identical settings, each served by its own vLLM: `eval compare` finds
every metric comparable and no change significant. A third, into the first one's results store but served in
another dtype, is served and scored anew (not reused) and is not comparable, naming the setting."""

from __future__ import annotations

import re

import pytest

from tests.helpers import hf_home, nemotron
from tests.test_e2e import SMALL, vllm_processes

pytestmark = pytest.mark.e2e
LIMIT = "evaluation.nemo_evaluator_config.config.params.limit_samples=8"


def test_identical_evaluations_are_comparable_and_show_no_significant_change(tmp_path):
    assert not vllm_processes(), "a vLLM server is already running"
    folders = []
    for name in ("first", "second"):  # two results stores: nothing is reused, both are evaluated
        r = nemotron("nano3", "eval", "-c", "local", "-t", "arc_challenge", "-t", "gsm8k",
                     f"evaluation.output_dir={tmp_path / name}", *SMALL, LIMIT, env={"HF_HOME": str(hf_home())},
                     timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        (results,) = (tmp_path / name).glob("*/*/results.json")
        folders.append(str(results.parent))
    out = nemotron("nano3", "eval", "compare", *folders)
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    rows = [line for line in out.stdout.splitlines() if line.startswith(("arc_challenge", "gsm8k"))]
    assert len(rows) == 4  # acc, acc_norm; strict, flexible
    for row in rows:
        # tested on all 8, not significant
        assert re.search(r"\[[+-]\d\.\d{4}, [+-]\d\.\d{4}\]\s+\S+\s+8\s+±\d\.\d{4}$", row), row
    assert "4 metrics: 0 significant at 5%, 0 not comparable" in out.stdout

    # issue 26: the same checkpoint served in another dtype is another model: no reuse, and not comparable.
    # vLLM's CPU build serves bfloat16 only on a CPU with AVX-512 BF16; elsewhere another max model length.
    bf16 = "avx512_bf16" in open("/proc/cpuinfo").read()
    changed = ("--dtype bfloat16 --max-model-len 4096" if bf16 else "--dtype float32 --max-model-len 2048")
    other = nemotron("nano3", "eval", "-c", "local", "-t", "arc_challenge", "-t", "gsm8k",
                     f"evaluation.output_dir={tmp_path / 'first'}", *SMALL, LIMIT,
                     f"deployment.extra_args={changed} --enforce-eager",
                     env={"HF_HOME": str(hf_home())}, timeout=900)
    assert other.returncode == 0, other.stderr[-3000:]
    assert "nothing to serve" not in other.stderr and "[serve]" in other.stderr
    third = sorted((tmp_path / "first").glob("*/*/results.json"))[-1].parent
    assert str(third) != folders[0]
    apart = nemotron("nano3", "eval", "compare", folders[0], str(third))
    assert apart.returncode == 0, apart.stderr
    names = "dtype float32 → bfloat16" if bf16 else "max-model-len 4096 → 2048"
    assert apart.stdout.count(f"not comparable: {names}") == 4, apart.stdout
