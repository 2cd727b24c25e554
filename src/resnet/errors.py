"""The project's own error types. A `UsageError` is the user's to fix (a bad flag, path, file or
data set): the CLI prints its message as one line and exits 2. Anything else is a bug, and the
CLI lets its traceback show. Nothing here imports torch, so `resnet --help` stays instant."""


class UsageError(ValueError):
    """A bad value or input, named in the message with what is allowed."""


class ConfigError(UsageError):
    """An option out of its range, or options that contradict each other or a resumed run."""


class DataError(UsageError):
    """Data that cannot make a dataset (no images, one class, an empty class, mismatched classes...)."""


class CheckpointError(UsageError):
    """A file that is not a usable checkpoint or export of ours."""


class WeightsError(UsageError):
    """Pretrained weights that cannot be read or do not fit the model."""


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message (torch.load's refusals run to a page of
    advice; torch.save's to a C++ trace), or its type's name when it has none."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


class MachineError(RuntimeError):
    """The machine, not the command line, is at fault (a port already taken): one line, exit 1."""


class TrainingError(RuntimeError):
    """The run cannot go on (a NaN loss, say); the last good checkpoint is kept. Exit code 1."""


class Interrupted(RuntimeError):
    """A run stopped by a signal (SIGINT, SIGTERM) between two steps, with last.pt written at the
    step it stopped after: the CLI exits 128 + the signal's number (130, 143), as the shell does."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
