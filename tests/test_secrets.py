"""The one redactor (issue 14): secrets are masked by value wherever they were copied, not only by key name."""

import contextlib
import logging
import os

import pytest

from nemotron.config import secrets


@pytest.mark.parametrize("name", ["HF_TOKEN", "WANDB_API_KEY", "PREFECT_API_KEY", "AWS_SECRET_ACCESS_KEY",
                                  "AWS_SESSION_TOKEN", "db_password", "ServerToken", "OPENAI_API_KEY", "apikey",
                                  # issue 27: names the heuristic missed
                                  "OPENAI_KEY", "GITHUB_PAT", "MY_SERVICE_AUTH", "WANDB_KEY"])
def test_secret_names(name):
    assert secrets.is_secret_name(name)


@pytest.mark.parametrize("name", ["tokenizer", "tokenizer_backend", "max_new_tokens", "SORT_KEY", "HF_HOME",
                                  "PATH", "served_model_name", "SSH_AUTH_SOCK", "api_key_env", "TOKEN_FILE",
                                  "PARTITION_KEY", "metric_key", "PATH_AUTH_FILE"])
def test_words_that_merely_contain_token_or_key_are_not_secrets(name):
    assert not secrets.is_secret_name(name)


def test_a_secret_value_is_masked_wherever_it_was_copied(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-1234567890")
    text = "served model tok-1234567890, url http://x/tok-1234567890/v1"
    assert secrets.mask(text) == "served model ***, url http://x/***/v1"
    data = {"deployment": {"served_model_name": "tok-1234567890", "env": {"API_TOKEN": "short"}},
            "tokenizer": "/ckpt", "list": ["a tok-1234567890 b"]}
    assert secrets.masked(data) == {"deployment": {"served_model_name": "***", "env": {"API_TOKEN": "***"}},
                                    "tokenizer": "/ckpt", "list": ["a *** b"]}


def test_config_secrets_are_remembered_and_short_values_never_masked():
    secrets.remember_config({"deployment": {"env": {"SERVER_API_KEY": "srv-key-0987654321", "FOO": "srv-plain"}}})
    assert secrets.mask("key srv-key-0987654321 plain srv-plain") == "key *** plain srv-plain"
    secrets.remember("1", "true", "abc")  # too short to be credentials, or a switch: masking them would garble text
    assert secrets.mask("1 true abc") == "1 true abc"


def test_a_short_secret_is_masked_once_it_has_four_characters(monkeypatch):
    """Issue 27: values under 8 characters were never masked."""
    monkeypatch.setenv("MY_SERVICE_AUTH", "k5x9z")
    monkeypatch.setenv("GITHUB_PAT", "ghp4")
    monkeypatch.setenv("FEATURE_TOKEN", "True")  # a switch, whatever its name
    assert secrets.mask("auth k5x9z pat ghp4 flag True") == "auth *** pat *** flag True"


def test_cli_overrides_keep_references_to_secret_values(monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # it writes the process environment: keep it to the test
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijkl")
    hidden = secrets.hidden_overrides(["deployment.env.SERVER_TOKEN=literal-secret-1", "a.b=hf_abcdefghijkl",
                                       "evaluation.timeout=10", "deployment.env.X_TOKEN=${oc.env:HF_TOKEN}"])
    assert hidden[0] == "deployment.env.SERVER_TOKEN=${oc.env:NEMOTRON_SECRET_OVERRIDE_0}"
    assert hidden[1] == "a.b=${oc.env:NEMOTRON_SECRET_OVERRIDE_1}"
    assert hidden[2:] == ["evaluation.timeout=10", "deployment.env.X_TOKEN=${oc.env:HF_TOKEN}"]
    assert os.environ["NEMOTRON_SECRET_OVERRIDE_0"] == "literal-secret-1"


@contextlib.contextmanager
def _handled(name: str):
    """A logger with a handler of its own, masked as the flow masks its handlers; yields it and what it emitted."""
    logger = logging.getLogger(name)
    handler = logging.Handler()
    seen: list[str] = []
    handler.emit = lambda record: seen.append(handler.format(record))
    logger.addHandler(handler)
    secrets.mask_logging()
    try:
        yield logger, seen
    finally:
        logger.removeHandler(handler)


def test_log_records_are_masked_by_the_handler_filter(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-abcdef123")
    with _handled("nemotron-test-masking") as (logger, seen):
        logger.warning("model %s failed", "wandb-key-abcdef123")
    assert seen == ["model *** failed"]


def _failing(secret: str) -> None:
    try:
        raise OSError(f"the tunnel said {secret}")
    except OSError as e:
        raise ValueError(f"serving failed: {secret}") from e


def test_a_traceback_is_masked_before_any_handler_formats_it(monkeypatch):
    """Issue 27: Prefect logs every failed run with exc_info, formatted after the filters ran."""
    monkeypatch.setenv("MY_SERVICE_AUTH", "tb-secret-5150")
    with _handled("nemotron-test-traceback") as (logger, seen):
        try:
            _failing("tb-secret-5150")
        except ValueError:
            logger.exception("the run failed")
    (text,) = seen
    assert "tb-secret-5150" not in text
    assert "Traceback (most recent call last)" in text and "ValueError: serving failed: ***" in text
    assert "OSError: the tunnel said ***" in text  # the cause, too


def test_an_exception_leaves_a_scrubbed_block_masked_and_of_its_own_type(monkeypatch):
    import subprocess

    monkeypatch.setenv("GITHUB_PAT", "pat-7781")
    with pytest.raises(ValueError) as e, secrets.scrubbed():  # the type stays: retries classify by it
        _failing("pat-7781")
    assert str(e.value) == "serving failed: ***" and str(e.value.__cause__) == "the tunnel said ***"
    with pytest.raises(RuntimeError) as e, secrets.scrubbed():  # a text built from the exception's fields
        raise subprocess.CalledProcessError(1, ["curl", "-H", "Authorization: pat-7781"])
    assert "pat-7781" not in str(e.value) and str(e.value).startswith("CalledProcessError: Command ")


def test_a_flow_that_fails_with_a_secret_leaves_none_in_its_state_or_its_logs(monkeypatch):
    """Issue 27: the state message (format_exception) and the traceback Prefect logs, read back from the API."""
    from prefect import flow, get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    monkeypatch.setenv("OPENAI_KEY", "sk-flow-31337")

    @flow(name="secret-failure")
    def failing(n: int = 1):
        secrets.mask_logging()
        with secrets.scrubbed():
            _failing("sk-flow-31337")

    state = failing(return_state=True)
    assert state.is_failed()
    assert "sk-flow-31337" not in state.message and "***" in state.message, state.message
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        for _ in range(30):  # the API handler sends in batches
            logs = "\n".join(e.message for e in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))))
            if "Traceback" in logs:
                break
            import time
            time.sleep(0.5)
        flow_state = client.read_flow_run(run_id).state
    assert "Traceback" in logs and "ValueError: serving failed: ***" in logs, logs
    assert "sk-flow-31337" not in logs and "sk-flow-31337" not in (flow_state.message or "")


def test_an_uncaught_error_and_a_server_log_tail_are_printed_masked(tmp_path):
    """README: what Python prints for an uncaught error, and the server log tail (errors, `eval logs`), masked."""
    import subprocess
    import sys

    from nemotron.serving import jobs

    r = subprocess.run([sys.executable, "-c", "from nemotron.config import secrets; secrets.mask_uncaught(); "
                        "raise ValueError('key uncaught-secret-77')"], capture_output=True, text=True,
                       env={**os.environ, "MY_SERVICE_AUTH": "uncaught-secret-77"})
    assert r.returncode == 1 and "ValueError: key ***" in r.stderr and "uncaught-secret-77" not in r.stderr
    log = tmp_path / "server.log"
    log.write_text("loading\nusing token tail-secret-88\n")
    secrets.remember("tail-secret-88")
    assert jobs.log_tail(log) == "loading\nusing token ***\n"


def test_what_a_harness_copied_of_a_secret_parameter_is_masked_and_its_databases_are_left_whole(tmp_path,
                                                                                                monkeypatch):
    """Issue 27: a harness parameter read from a secret (`${oc.env:...}`) reaches the harness through a private
    config file; nemo-evaluator and lm-eval copy it into their records (run_config.yml, results json), which are
    masked once the harness exits. A database (the response cache) is left: a shorter value would break it."""
    monkeypatch.setenv("JUDGE_API_KEY", "judge-key-0a9c61")
    (tmp_path / "sub").mkdir()
    (tmp_path / "run_config.yml").write_text("params:\n  extra:\n    judge: judge-key-0a9c61\n")
    (tmp_path / "sub" / "results_1.json").write_text('{"model_args": "key=judge-key-0a9c61,x=1"}')
    (tmp_path / "cache.db").write_bytes(b"SQLite\0judge-key-0a9c61\0")
    (tmp_path / "plain.log").write_text("nothing secret\n")
    assert secrets.scrub_tree(tmp_path) == [tmp_path / "run_config.yml", tmp_path / "sub" / "results_1.json"]
    assert (tmp_path / "run_config.yml").read_text() == "params:\n  extra:\n    judge: ***\n"
    assert (tmp_path / "sub" / "results_1.json").read_text() == '{"model_args": "key=***,x=1"}'
    assert (tmp_path / "cache.db").read_bytes() == b"SQLite\0judge-key-0a9c61\0"
    assert not list(tmp_path.rglob("*.masking"))


def test_the_manifest_masks_a_secret_copied_into_a_task_parameter(tmp_path, monkeypatch):
    from nemotron.records import results

    monkeypatch.setenv("OPENAI_KEY", "sk-manifest-77aa")
    copied = {"hellaswag": {"tokenizer": "/x/sk-manifest-77aa"}}
    doc = results.write_manifest(tmp_path, {"server": {"run_configs": copied}})
    assert "sk-manifest-77aa" not in (tmp_path / "manifest.json").read_text() and "sk-manifest-77aa" not in str(doc)
    assert doc["server"]["run_configs"]["hellaswag"]["tokenizer"] == "/x/***"
