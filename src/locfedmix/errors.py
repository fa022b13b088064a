"""User-facing errors: anything the user can fix by changing a config, a flag or a file."""


class UserError(Exception):
    """A mistake in the user's input; the CLI prints its message as one line and exits with code 2."""


class DataError(UserError):
    """A dataset file that is truncated, corrupt, oversized or not what its name says; the message names the file.
    Dataset files may come from anywhere, so the readers treat every byte as hostile and fail with this, never with a
    crash, a hang or an allocation the file does not justify."""


class NumericalError(Exception):
    """A loss, smashed tensor or gradient stopped being finite; the run stops and its last checkpoint is kept."""
