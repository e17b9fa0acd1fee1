"""Secrets stay home: one redactor for everything the evaluation writes or shows.

It masks by value: the values of environment variables whose names say they hold a secret
(`WANDB_API_KEY`, `HF_TOKEN`, `AWS_SECRET_ACCESS_KEY`, ...), the W&B key `wandb login` stored, and the
values of config entries with such names (`deployment.env.SERVER_TOKEN`) once a config is known.
A value copied elsewhere — into a served model name through `${oc.env:...}`, a log line, an error —
is masked there too, which a redactor that only looks at key names cannot do.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MASK = "***"
MIN_LENGTH = 4  # a short secret is still one; masking "1" everywhere would garble text
_NEVER_MASKED = {"true", "false", "none", "null", "unset", "empty"}  # switches, whatever their variable's name
_SECRET_WORDS = {"token", "secret", "password", "passwd", "passphrase", "credential", "credentials", "apikey",
                 "auth", "authorization", "pat"}
# `<word>_KEY` holds a secret (OPENAI_KEY, WANDB_KEY) unless the word says it names a thing, not a credential
_NAMING_KEY = {"sort", "primary", "foreign", "partition", "cache", "shard", "group", "routing", "index", "lookup",
               "hash", "dict", "map", "hot", "public", "metric", "task", "answer", "label", "result", "column", "row"}
_KEY_QUALIFIERS = {"api", "access", "private", "secret", "signing", "encryption", "master", "license", "service"}
_REFERENCE_WORDS = {"env", "var", "variable", "file", "path"}
# environment a child process needs that is not a secret, whatever its name says
_NOT_SECRET = {"SSH_AUTH_SOCK"}

_lock = threading.Lock()
_remembered: set[str] = set()


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """`HF_TOKEN`, `WANDB_API_KEY`, `db_password` are; `tokenizer`, `max_new_tokens`, `SORT_KEY` are not."""
    if name in _NOT_SECRET:
        return False
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()) if w]
    if words and words[-1] in _REFERENCE_WORDS:  # `api_key_env`, `token_file`: where a secret is, not the secret
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(w == "key" and i > 0 and (words[i - 1] in _KEY_QUALIFIERS or (i == len(words) - 1 and words[i - 1]
                                                                          not in _NAMING_KEY))
               for i, w in enumerate(words))


def maskable(value: str | None) -> bool:
    """A value long enough to be a credential and not a switch (`true`, `none`)."""
    return bool(value) and len(value) >= MIN_LENGTH and value.lower() not in _NEVER_MASKED


def secret_env_names() -> list[str]:
    """The names of the secret variables in this process's environment."""
    return sorted(k for k in os.environ if is_secret_name(k))


def remember(*values: str | None) -> None:
    """Mask these values from now on (a config's secret entries, a key read from ~/.netrc)."""
    with _lock:
        _remembered.update(v for v in values if maskable(v))


def remember_config(data: Any) -> None:
    """Remember the values of a config's (or profile's) secret-named entries, at any depth."""
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(v, str) and is_secret_name(str(k)):
                remember(v)
            else:
                remember_config(v)
    elif isinstance(data, list):
        for v in data:
            remember_config(v)


def values() -> list[str]:
    """Every value masked now, longest first (so a secret containing another is masked whole)."""
    found = {v for k, v in os.environ.items() if maskable(v) and is_secret_name(k)}
    with _lock:
        found |= _remembered
    return sorted(found, key=len, reverse=True)


def mask(text: str) -> str:
    """The text with every known secret value replaced by ***."""
    for value in values():
        if value in text:
            text = text.replace(value, MASK)
    return text


def masked(data: Any) -> Any:
    """A copy of JSON-like data with secret values masked: in any string, and whole under a secret key."""
    if isinstance(data, dict):
        return {k: MASK if is_secret_name(str(k)) and isinstance(v, str) and v else masked(v)
                for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [masked(v) for v in data]
    if isinstance(data, str):
        return mask(data)
    return data


def contains_secret(text: str) -> bool:
    return mask(text) != text


TEXT_SUFFIXES = (".yml", ".yaml", ".json", ".jsonl", ".log", ".txt", ".md", ".csv", ".html")


def scrub_tree(root: Path) -> list[Path]:
    """Mask the secrets in the text files under `root` (a harness's output: it copies its config, with a value that
    needed the secret, into its own records), each rewritten whole; binary files (a cache's database) are left,
    since a shorter value would break them. Returns the files rewritten."""
    rewritten = []
    for path in sorted(root.rglob("*")):
        if path.suffix in TEXT_SUFFIXES and path.is_file() and not path.is_symlink():
            text = path.read_text(errors="surrogateescape")
            if contains_secret(text):
                tmp = path.with_name(path.name + ".masking")
                tmp.write_text(mask(text), errors="surrogateescape")
                os.replace(tmp, path)
                rewritten.append(path)
    return rewritten


class MaskingFilter(logging.Filter):
    """Masks secret values in every record a handler emits (console, Prefect's API, files): its message, and the
    traceback Prefect attaches to every failed run, which a handler formats only after the filters ran."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = mask(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            if contains_secret(text):  # handlers use exc_text once exc_info is gone
                record.exc_info, record.exc_text = None, mask(text)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


def scrub(error: BaseException) -> BaseException:
    """The exception with the secrets in its text masked, for what leaves the process with it (Prefect's state
    message, the traceback it logs): its arguments and its causes' are masked in place, so its type stays for
    whoever classifies it (retries); one whose text is built from other fields (a command it ran) and still shows
    a secret becomes a RuntimeError with the masked text."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current.args = tuple(mask(a) if isinstance(a, str) else a for a in current.args)
        current = current.__cause__ or current.__context__
    if not any(contains_secret("".join(traceback.format_exception_only(e))) for e in chain):
        return error
    hidden = RuntimeError(f"{type(error).__name__}: {mask(str(error))}")
    hidden.__suppress_context__ = True
    return hidden


@contextlib.contextmanager
def scrubbed() -> Iterator[None]:
    """An exception leaves the block with its secrets masked (`scrub`): around a flow's or a task's body."""
    try:
        yield
    except Exception as e:
        hidden = scrub(e)
        if hidden is e:
            raise
        raise hidden from None


def mask_uncaught() -> None:
    """An exception nobody catches is printed with its secrets masked (this process's main and other threads)."""
    def show(kind, error, tb, header: str = "") -> None:
        sys.stderr.write(mask(header + "".join(traceback.format_exception(kind, error, tb))))

    def show_thread(a) -> None:
        if a.exc_type is not SystemExit:
            show(a.exc_type, a.exc_value, a.exc_traceback,
                 f"Exception in thread {a.thread.name if a.thread else '?'}:\n")

    sys.excepthook, threading.excepthook = show, show_thread


def mask_logging() -> None:
    """Put a MaskingFilter on every handler this process logs through (idempotent)."""
    mask_uncaught()
    loggers = [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())


def hidden_overrides(overrides: list[str]) -> list[str]:
    """The CLI's overrides as they may be stored (flow-run parameters): a secret value (under a secret-named
    key, or one already known) moves into this process's environment, where the in-process flow reads it
    back through `${oc.env:...}`, and the stored override keeps only that reference."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and value and not value.startswith("${") and (
                is_secret_name(key.rsplit(".", 1)[-1]) or contains_secret(value)):
            name = f"NEMOTRON_SECRET_OVERRIDE_{len(out)}"
            os.environ[name] = value
            remember(value)
            item = f"{key}=${{oc.env:{name}}}"
        out.append(item)
    return out
