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


class TrainingError(RuntimeError):
    """The run cannot go on (a NaN loss, say); the last good checkpoint is kept. Exit code 1."""
