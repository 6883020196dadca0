"""The error hierarchy: every error the user should see is a PipelineError with a one-line message."""


class PipelineError(Exception):
    """Root of every expected failure; `str(error)` is the one line shown to the user."""


class ConfigError(PipelineError):
    """The config file is invalid; carries every problem found, one line each."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UsageError(PipelineError):
    """The command line is wrong (exit code 2)."""


class OptionError(PipelineError):
    """A stage option has a bad value; the config loader adds where it was found."""

    def __init__(self, message, option=None, index=None):
        self.option = option
        self.index = index  # the element of a list option the problem is about, if any
        super().__init__(message)


class StageError(PipelineError):
    """A stage failed at run time; the message names the stage and the object it was working on."""


class SourceError(StageError):
    """A source could not list or read an item."""


class SinkError(StageError):
    """A sink could not write an item."""


class MissingDependency(PipelineError):
    """An optional library a stage needs is not installed or cannot be loaded."""
