"""The one redactor (issue 14): secrets are masked by value wherever they were copied, not only by key name."""

import logging
import os

import pytest

from nemotron import secrets


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


def test_log_records_are_masked_by_the_handler_filter(monkeypatch, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-abcdef123")
    logger = logging.getLogger("nemotron-test-masking")
    handler = logging.Handler()
    seen = []
    handler.emit = lambda record: seen.append(handler.format(record))
    logger.addHandler(handler)
    secrets.mask_logging()
    logger.warning("model %s failed", "wandb-key-abcdef123")
    logger.removeHandler(handler)
    assert seen == ["model *** failed"]
