"""The project's error family. The CLI prints these as one line (exit 2 for bad input) without a traceback."""


class NemotronError(Exception):
    """Base class: the message says what is wrong, where, and what to try."""

    exit_code = 1


class ConfigError(NemotronError):
    """Bad input: an unknown key, an invalid value, an unknown task or profile. Nothing was started.

    Always one line: a newline in the value it quotes is shown as `\\n`."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(str(message).replace("\n", "\\n"))


class SetupError(NemotronError):
    """Provisioning the local serving venv or model failed."""


class ServeError(NemotronError):
    """The model server could not be started, or died."""


class BenchmarkError(NemotronError):
    """A benchmark run failed; the message carries the exit code, the log tail and the output dir.

    `kind` says whose problem it is, and so whether trying again can help: "infrastructure"
    (server unreachable or dead, timeout, 5xx: retried), "configuration" (unknown task, missing
    tokenizer or data: not retried), "model" (the run ended but its output holds no scores)."""

    def __init__(self, message: str, kind: str = "configuration", endpoint: str | None = None,
                 key_env: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.endpoint = endpoint  # the health URL of the server it ran against: a dead one is relaunched, not retried
        self.key_env = key_env  # the variable holding what that URL wants as a bearer token (a name, not a value)

    def __reduce__(self):  # keep the fields through pickling (Prefect stores task exceptions)
        return type(self), (str(self), self.kind, self.endpoint, self.key_env)


class DiskFull(BenchmarkError):
    """The disk a benchmark writes to is full (or over quota): an infrastructure failure that no retry, relaunch or
    further benchmark can help, so the suite stops; what finished stays in its folder and is reused."""

    def __init__(self, message: str, path: str):
        super().__init__(message, "infrastructure")
        self.path = path

    def __reduce__(self):
        return type(self), (str(self), self.path)


class PrefectUnreachable(NemotronError):
    """The Prefect API did not answer for run.api_wait s once the benchmarks had ended: the results are on disk, and
    what needs the API (the score artifacts, the comparison and its gate, the W&B export subflow) is not done."""
