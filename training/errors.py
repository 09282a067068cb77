"""The one error type the training command reports to its user."""


class TrainingError(Exception):
    """A failure the user can fix: the message names the file or figure and what to do.

    ``python -m training`` prints it as one ``error:`` line and exits 1; anything else is a bug and keeps
    its traceback."""
