"""User-facing error types: the CLI prints these as one clear message instead of a traceback."""


class BenchError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    stops_request = True
    """Found while building a request's stages, it stops that request (bad input: nothing of it can run). False: a
    result of the configuration on this task, recorded as the failure of each run that needs the stage (the sweep
    goes on, and the leaderboard shows it)."""


class UnknownNameError(BenchError, KeyError):
    """A plugin, preset or metric name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class ConfigError(BenchError, ValueError):
    """A configuration key or value that does not fit its dataclass."""


class PluginError(BenchError):
    """A plugin that cannot be loaded or does not satisfy its contract."""


class DataError(BenchError):
    """A missing or malformed data file, model directory or dataset."""


class FunctionDriftError(BenchError):
    """A defense that claims to preserve the model's function changed its outputs beyond its declared tolerance."""


class TrainingDivergedError(BenchError):
    """A trained defense's loss became non-finite: its configuration (usually the learning rate) does not train.
    That is a finding about the defense at that configuration on that task (Sophon at its defaults on sd-style), not
    bad input: its runs are recorded as failed with this message instead of the request vanishing from a sweep."""

    stops_request = False


class OutOfMemoryError(MemoryError):
    """A model or dataset that does not fit this machine's (or GPU's) memory. Not a :class:`BenchError`: the input is
    fine and another machine may run it, so the runs that need it fail (recorded with this message) and the rest of
    a sweep goes on, instead of the request stopping as it does on bad input."""
