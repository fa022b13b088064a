"""User-facing errors: anything the user can fix by changing a config, a flag or a file."""


class UserError(Exception):
    """A mistake in the user's input; the CLI prints its message as one line and exits with code 2."""


class DataError(UserError):
    """A dataset file that is truncated, corrupt, oversized or not what its name says; the message names the file.
    Dataset files may come from anywhere, so the readers treat every byte as hostile and fail with this, never with a
    crash, a hang or an allocation the file does not justify."""


class NumericalError(Exception):
    """A loss, smashed tensor or gradient stopped being finite; the run stops and its last checkpoint is kept."""


class RunFault(Exception):
    """The operating system refused a write while a run was under way (a full or read-only disk, say); the message
    names the file, the cause and the checkpoint that is left intact. The CLI exits with code 4."""


class NothingTrained(UserWarning):
    """A run ended in which no step trained any model (every upload past the deadline, say): its numbers are those of
    the initial models, and its training loss is undefined."""


class DeploymentError(Exception):
    """A deployed client did not answer, answered with an error, or sent what was not asked for; the message names
    the client, the message and the reason."""


class ClientsLost(Exception):
    """Clients that stopped answering mid-step (a deployed client's machine died): their uploads never came, so the
    step is served again without them and they are out for the rest of the round, as a client that fails is."""

    def __init__(self, ids: set[int]):
        super().__init__(f"clients {sorted(ids)} stopped answering")
        self.ids = ids
