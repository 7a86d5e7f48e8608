"""Errors raised to users. Each message says what went wrong and what to do."""


class AepipeError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(AepipeError):
    """The configuration or a command-line argument is invalid."""


class CorpusError(AepipeError):
    """The corpus as a whole cannot be read (single bad items are quarantined instead)."""


class MissingArtifact(AepipeError):
    """A stage needs an artifact (model, store, index) that does not exist yet."""


class DimensionMismatch(AepipeError):
    """Query vectors do not have the dimension of the index."""


class IndexMismatch(AepipeError):
    """Index, store and model come from different models."""


class MissingExtra(AepipeError):
    """An optional dependency (an ``aepipe[extra]``) is needed for what was asked."""


def missing_extra(package: str, extra: str, what: str) -> MissingExtra:
    """The error for ``what`` needing ``package``, naming the install command."""
    return MissingExtra(f"{what} needs {package}: pip install 'aepipe[{extra}]'")


class RunLocked(AepipeError):
    """Another process is writing the run (it holds ``RUN/.lock``)."""


class CorruptArtifact(AepipeError):
    """An artifact's files differ from what was written (aepipe verify)."""


class TrainingError(AepipeError):
    """Training failed as a whole (e.g. a DDP training process exited with an error)."""


class BadItem(Exception):
    """One corpus item that cannot be used (quarantined with ``reason``, never raised to users)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
