"""Error hierarchy. Every message names the offending value and the fix; the CLI prints it as one line."""


class DiffspaceError(Exception):
    """Base class of every error diffspace raises on purpose."""


class ConfigError(DiffspaceError, ValueError):
    """A parameter, option or combination of options is invalid."""


class DataError(DiffspaceError, ValueError):
    """A dataset, image, array or file content is missing or malformed."""


class CheckpointError(DiffspaceError):
    """A checkpoint cannot be written, read or matched to a network."""


class NumericalError(DiffspaceError, ArithmeticError):
    """A computation produced NaN/Inf or left its domain."""
