"""Typed failures and the exit codes of the trainer contract."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_BAD_CONFIG = 3
EXIT_TRANSIENT = 75


class TrainerError(Exception):
    """A failure the trainer understands; ``exit_code`` is what the process exits with."""

    exit_code = EXIT_CRASH
    kind = "error"


class ConfigError(TrainerError):
    """A missing or invalid variable, an unsupported URI, a hyperparameter out of range.

    Retrying cannot help, so the Job's podFailurePolicy fails the RetrainJob at once.
    """

    exit_code = EXIT_BAD_CONFIG
    kind = "bad configuration"


class DatasetError(ConfigError):
    """A dataset snapshot that does not match its sha256, or whose rows are invalid."""

    kind = "bad dataset"


class TransientError(TrainerError):
    """I/O, out of memory, a broken download, a preemption: a retry may succeed."""

    exit_code = EXIT_TRANSIENT
    kind = "transient failure"


class Preempted(TransientError):
    """The process was asked to stop (SIGTERM) and saved a checkpoint first."""

    kind = "stopped"


class TrainingFailed(TrainerError):
    """Training itself went wrong (for example the loss became NaN): counts as a crash."""

    kind = "training failed"


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is running out of memory: CUDA's error, or the allocator's RuntimeError."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and ("out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower())
