"""User-facing errors: anything the user can fix by changing a config, a flag or a file."""


class UserError(Exception):
    """A mistake in the user's input; the CLI prints its message as one line and exits with code 2."""


class NumericalError(Exception):
    """A loss, smashed tensor or gradient stopped being finite; the run stops and its last checkpoint is kept."""
