"""Issue 30: each harness but lm-eval runs in an environment of its own, built from PyPI from a lock in the
repository."""

import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from nemotron.benchmarks import environments, runner
from nemotron.errors import ConfigError


def test_every_lock_pins_its_harness_package_and_the_projects_nemo_evaluator():
    """The flow writes nemo-evaluator's run config and reads its output: every environment must run the same
    nemo-evaluator as the project, and name its harness's package."""
    locks = sorted(environments.LOCKS.glob("*.txt"))
    assert {p.stem for p in locks} == set(environments.PACKAGES) - {environments.IN_PROJECT}
    for lock in locks:
        pins = environments.pinned(lock.stem)
        assert pins["nemo-evaluator"] == metadata.version("nemo-evaluator"), lock.name
        assert environments.PACKAGES[lock.stem] in pins, lock.name


def test_a_new_lock_is_a_new_environment_and_its_versions_are_in_the_result_key(tmp_path, monkeypatch):
    monkeypatch.setattr(environments, "LOCKS", tmp_path)
    monkeypatch.setenv("NEMOTRON_HOME", str(tmp_path / "home"))
    (tmp_path / "bfcl.txt").write_text("nvidia-bfcl==26.3\nnemo-evaluator==0.2.8\nnumpy==1.26.4\n")
    before = environments.folder("bfcl")
    key = runner.result_key("m", "bfcl.bfclv3", {"task": "simple"})
    (tmp_path / "bfcl.txt").write_text("nvidia-bfcl==26.4\nnemo-evaluator==0.2.8\nnumpy==1.26.4\n")
    assert environments.folder("bfcl") != before and before.parent == tmp_path / "home" / "harness-envs"
    assert environments.pinned("bfcl") == {"nvidia-bfcl": "26.4", "nemo-evaluator": "0.2.8"}
    assert runner.result_key("m", "bfcl.bfclv3", {"task": "simple"}) != key  # an upgraded harness scores anew
    assert runner.result_key("m", "lm-evaluation-harness.gsm8k", {}) == \
        runner.result_key("m", "lm-evaluation-harness.gsm8k", {})


def test_a_harness_that_cannot_run_here_is_refused_at_planning_in_one_line(tmp_path, monkeypatch):
    environments.check("lm-evaluation-harness", offline=True)
    environments.check("bfcl", offline=True)  # its data is in its package
    with pytest.raises(ConfigError, match=r"task 'AIME_2025' runs on the simple_evals harness, which fetches its "
                                          r"data at run time, and this run is offline .*hf_offline=false"):
        environments.check("simple_evals", offline=True, task="AIME_2025")
    environments.check("simple_evals", offline=False)
    monkeypatch.setattr(environments, "LOCKS", tmp_path)
    with pytest.raises(ConfigError, match=r"no environment here; lock it: `uv run python scripts/lock_harnesses.py "
                                          r"bfcl` \(its package is nvidia-bfcl\)"):
        environments.check("bfcl")
    with pytest.raises(ConfigError, match="no PyPI package: run it with nemo-evaluator-launcher"):
        environments.check("nemo_skills")


def test_setup_names_harnesses_or_all_and_refuses_an_unknown_one():
    assert environments.named(["all"]) == sorted(set(environments.PACKAGES) - {environments.IN_PROJECT})
    assert environments.named(["bfcl", "bfcl", "lm-evaluation-harness"]) == ["bfcl"]
    with pytest.raises(ConfigError, match=r"unknown harness 'bfcll'; valid: all, bfcl, "):
        environments.named(["bfcll"])


def test_the_bfcl_environment_is_built_from_pypi_beside_the_projects_and_once(tmp_path, monkeypatch):
    """Built from its lock: numpy 1.26.4 there (nvidia-bfcl pins it), the project's own numpy here; `bfcl` and
    nemo-evaluator in its bin. A second build finds it complete and runs nothing; a half-built one is made anew."""
    monkeypatch.setenv("NEMOTRON_HOME", str(tmp_path / "home"))
    said = []
    built = environments.build("bfcl", said.append)
    assert built == environments.folder("bfcl") and environments.ready("bfcl")
    assert said and "nvidia-bfcl==26.3" in said[0]
    there = subprocess.run([str(built / "bin" / "python"), "-c", "import numpy; print(numpy.__version__)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert there == "1.26.4" and metadata.version("numpy") != there
    assert (built / "bin" / "bfcl").is_file() and (built / "bin" / "nemo-evaluator").is_file()
    assert "ready" in environments.state("bfcl")

    def no_build(*_a, **_k):
        raise AssertionError("a complete environment is not built again")

    monkeypatch.setattr(environments.subprocess, "run", no_build)
    assert environments.build("bfcl", said.append) == built
    monkeypatch.undo()
    monkeypatch.setenv("NEMOTRON_HOME", str(tmp_path / "home"))
    (built / environments.COMPLETE).unlink()  # as a build killed half way leaves it
    (built / "bin" / "bfcl").unlink()
    assert not environments.ready("bfcl")
    environments.build("bfcl", said.append)
    assert (built / "bin" / "bfcl").is_file() and environments.ready("bfcl")


def test_an_environment_that_cannot_be_built_is_one_line_naming_the_package_and_leaves_nothing(tmp_path,
                                                                                              monkeypatch):
    monkeypatch.setenv("NEMOTRON_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(environments, "LOCKS", tmp_path / "locks")
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "bfcl.txt").write_text("nvidia-bfcl==0.0.0.dev404\nnemo-evaluator==0.2.8\n")
    with pytest.raises(ConfigError) as e:
        environments.build("bfcl", lambda m: None)
    assert str(e.value).startswith("the bfcl environment (nvidia-bfcl==0.0.0.dev404, nemo-evaluator==0.2.8) could "
                                   "not be built: ") and "\n" not in str(e.value)
    assert not environments.folder("bfcl").exists() and not environments.ready("bfcl")


def test_a_harness_runs_its_own_environments_nemo_evaluator(tmp_path, monkeypatch):
    """lm-eval's benchmarks run the project's nemo-evaluator (in-process CLI); another harness's run the
    nemo-evaluator of its environment, with its programs first on PATH."""
    monkeypatch.setenv("NEMOTRON_HOME", str(tmp_path / "home"))
    assert environments.bin_dir("lm-evaluation-harness") is None
    assert environments.bin_dir("bfcl") == environments.folder("bfcl") / "bin"
    plan = runner.BenchmarkPlan("b", "bfcl.bfclv3_ast_prompting", "chat", str(tmp_path), 60, 0, {})
    assert plan.harness == "bfcl" and Path(environments.bin_dir(plan.harness)).name == "bin"


def test_an_environment_that_cannot_be_built_fails_the_run_before_any_server_starts(tmp_path, monkeypatch):
    """The flow builds what its benchmarks' harnesses need before it serves: an environment that cannot be built
    is the run's one-line failure, and the server (the fake, journalling its starts) is never launched."""
    from flows.eval import nano3_eval
    from tests.helpers import fake_request

    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "bfcl.txt").write_text("nvidia-bfcl==0.0.0.dev404\nnemo-evaluator==0.2.8\n")
    monkeypatch.setattr(environments, "LOCKS", locks)
    journal = tmp_path / "journal"
    request = fake_request(tmp_path, "--journal", str(journal), tasks=("bfclv3_ast_prompting",),
                           extra=["evaluation.nemo_evaluator_config.config.params.task=simple"])
    state = nano3_eval(**request, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("the bfcl environment (nvidia-bfcl==0.0.0.dev404, nemo-evaluator==0.2.8) could "
                                    "not be built: ") and "\n" not in state.message, state.message
    assert not journal.exists(), journal.read_text()  # no server start
    assert not environments.folder("bfcl").exists()


def test_a_harness_that_needs_torch_gets_the_cpu_build_and_no_cuda_libraries():
    """README: mtbench, tooltalk, garak, helm and vlmevalkit get PyTorch's CPU build, the serving venv's."""
    from nemotron.serving import runtime

    with_torch = {lock.stem for lock in environments.LOCKS.glob("*.txt") if "\ntorch==" in lock.read_text()}
    assert with_torch == {"mtbench", "tooltalk", "garak", "helm", "vlmevalkit"}
    for name in with_torch:
        text = (environments.LOCKS / f"{name}.txt").read_text()
        assert f"\ntorch=={runtime.TORCH}\n" in text and "\nnvidia-cublas" not in text, name


def test_mtbench_judged_by_another_model_than_gpt4_finds_its_summary(tmp_path):
    """nvidia-mtbench-evaluator 26.3 writes `<judge>-result.json` for a judge other than gpt-4 and its parser reads
    `result.json`: the output folder gets a link by that name to where the harness writes."""
    def config(judge, limit):
        return {"config": {"params": {"limit_samples": limit, "extra": {"judge": {"model_id": judge}}}},
                "target": {"api_endpoint": {"model_id": "smollm2-135m-instruct"}}}

    environments.prepare_output("mtbench", tmp_path, config("org/judge", 1))
    link = tmp_path / "result.json"
    assert link.is_symlink() and not link.exists()  # dangles until the harness writes its summary
    written = tmp_path.resolve() / "mtbench" / "smollm2-135m-instruct" / "first_1" / "org--judge-result.json"
    assert link.readlink() == written
    written.parent.mkdir(parents=True)
    written.write_text('{"total": 5.0}')
    assert list(tmp_path.rglob("**/result.json")) == [link] and link.read_text() == '{"total": 5.0}'  # as parsed
    environments.prepare_output("mtbench", tmp_path, config("smollm2", None))  # a retry, no limit: the link anew
    assert link.readlink() == tmp_path.resolve() / "mtbench" / "smollm2-135m-instruct" / "smollm2-result.json"
    for harness, judge in (("mtbench", "gpt-4"), ("bfcl", "x")):  # gpt-4's is result.json; other harnesses: none
        other = tmp_path / harness / judge
        other.mkdir(parents=True)
        environments.prepare_output(harness, other, config(judge, 1))
        assert not (other / "result.json").exists()


def test_every_simple_evals_task_names_what_it_would_download():
    """The offline refusal names the download of each of simple-evals' tasks in the registry (88 in 26.3)."""
    from nemotron.benchmarks import registry

    tasks = [t for t in registry.tasks().values() if t.harness == "simple_evals"]
    assert len(tasks) >= 80
    named = {t.name: environments.downloads("simple_evals", t.harness_task) for t in tasks}
    assert all(named.values()), [n for n, what in named.items() if not what]
    assert named["mmlu_pro_llama_4"] == "the Hugging Face dataset TIGER-Lab/MMLU-Pro"
    assert named["mmlu_de-lite"] == "the Hugging Face dataset CohereLabs/Global-MMLU-Lite (de)"
    assert named["mmlu_fr"] == "the Hugging Face dataset CohereLabs/Global-MMLU (fr)"
    assert named["gpqa_diamond_nemo"] == "the Hugging Face dataset Idavidrein/gpqa (gpqa_diamond)"
    assert environments.downloads("bfcl", "simple") is None
