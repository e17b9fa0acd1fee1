import os
import shutil

import pytest

from nemotron.records import results
from nemotron.records.results import BenchmarkResult, SuiteResult
from tests.helpers import FIXTURES


def scores(name, tmp_path):
    out = tmp_path / name
    shutil.copytree(FIXTURES / name, out)
    return results.parse_output_dir(name, out)


def test_single_task_metrics_with_stderr_and_samples(tmp_path):
    got = {s.metric: s for s in scores("hellaswag", tmp_path)}
    assert set(got) == {"acc", "acc_norm"}
    assert got["acc_norm"].value == 0.5 and got["acc_norm"].stderr == 0.5 and got["acc_norm"].samples == 2


def test_tag_of_tasks_reports_each_task(tmp_path):
    got = {s.metric for s in scores("truthfulqa", tmp_path)}
    assert {"truthfulqa_mc1/acc", "truthfulqa_mc2/acc", "truthfulqa_gen/bleu_acc"} <= got


def test_missing_results_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no results.yml"):
        results.parse_output_dir("x", tmp_path)


def test_table_and_summary_round_trip(tmp_path):
    suite = SuiteResult("m", str(tmp_path), (
        BenchmarkResult("hellaswag", "completed", str(tmp_path / "hellaswag"), 12.3, scores("hellaswag", tmp_path)),
        BenchmarkResult("gsm8k", "failed", str(tmp_path / "gsm8k"), 4.0, error="boom", attempts=2),
    ))
    table = results.render_table(suite)
    assert "hellaswag  acc_norm  0.5000  ± 0.5000" in table and "gsm8k      FAILED" in table
    path = results.write_summary(suite)
    assert results.read_summary(path) == suite and suite.failed == ["gsm8k"]
    assert "**gsm8k failed** (unknown failure) after 2 attempt(s): boom" in (tmp_path / "scores.md").read_text()


def test_summary_shows_the_change_against_the_previous_evaluation_of_the_series(tmp_path):
    suite = SuiteResult("rl:latest", str(tmp_path), (
        BenchmarkResult("hellaswag", "completed", str(tmp_path / "hellaswag"), 12.3, scores("hellaswag", tmp_path)),
        BenchmarkResult("gsm8k", "failed", str(tmp_path / "gsm8k"), 4.0, error="boom"),
    ))
    before = results.Previous("team/p/nano3-rl-model:v2", "eval-rl:v2", "2026-11-27 10:00 UTC", (
        {"benchmark": "hellaswag", "metric": "acc", "value": 0.75},
        {"benchmark": "gsm8k", "metric": "exact_match", "value": 0.1}))
    md = results.render_markdown(suite, before, series="nano3-rl-model", version="team/p/nano3-rl-model:v3")
    assert md.startswith("# Evaluation of `team/p/nano3-rl-model:v3` (`rl:latest`)")
    assert ("Change against the previous evaluation of `nano3-rl-model`: `team/p/nano3-rl-model:v2` "
            "(flow run `eval-rl:v2`, 2026-11-27 10:00 UTC)") in md
    assert "| hellaswag | acc | 0.0000 | 0.0000 | 2 | 12 | -0.7500 |" in md
    assert "| hellaswag | acc_norm | 0.5000 | 0.5000 | 2 | 12 | new |" in md  # not in the previous run
    assert "| gsm8k | FAILED | **FAILED** |  |  | 4 |  |" in md
    first = results.render_markdown(suite, None, series="nano3-rl-model")
    assert "First evaluation of `nano3-rl-model`" in first and "| change |" not in first


def test_artifact_keys_are_what_prefect_accepts():
    assert results.artifact_key("nano3-rl-model", "scores") == "nano3-rl-model-scores"
    assert results.artifact_key("SmolLM2_135M.v1", "summary") == "smollm2-135m-v1-summary"


def test_records_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = results.write_atomic(tmp_path / "results.json", '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "fsync", crash)
    with pytest.raises(OSError):
        results.write_atomic(path, '{"a": 2, "b": "half')
    assert path.read_text() == '{"a": 1}\n'  # the old record stands, and no temporary file is left
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_records_honour_the_umask_so_a_shared_results_folder_stays_the_teams(tmp_path):
    """Issue 27: records were 0600 whatever the umask (the temporary file's mode), unreadable to the team."""
    before = os.umask(0o002)
    try:
        assert results.umask() == 0o002
        assert results.write_atomic(tmp_path / "team.json", "{}").stat().st_mode & 0o777 == 0o664
        os.umask(0o077)
        assert results.write_atomic(tmp_path / "mine.json", "{}").stat().st_mode & 0o777 == 0o600
        assert results.write_atomic(tmp_path / "run.sh", "", mode=0o755).stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(before)


def test_a_damaged_record_is_one_line_naming_it(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"schema_version": 1, "model": "m", "resu')
    with pytest.raises(results.ConfigError, match=f"{path} is damaged") as e:
        results.read_summary(path)
    assert "\n" not in str(e.value)
