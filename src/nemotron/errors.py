"""The project's error family. The CLI prints these as one line (exit 2 for bad input) without a traceback."""


class NemotronError(Exception):
    """Base class: the message says what is wrong, where, and what to try."""

    exit_code = 1


class ConfigError(NemotronError):
    """Bad input: an unknown key, an invalid value, an unknown task or profile. Nothing was started."""

    exit_code = 2


class SetupError(NemotronError):
    """Provisioning the local serving venv or model failed."""


class ServeError(NemotronError):
    """The model server could not be started, or died."""


class BenchmarkError(NemotronError):
    """A benchmark run failed; the message carries the exit code, the log tail and the output dir."""
