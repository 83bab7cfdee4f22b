"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (data, checkpoint, config, arguments): the message says what is wrong and what to do."""


def first_line(err: BaseException) -> str:
    """``err``'s message for a one-line error: its first non-empty line, whole (a message is never cut mid-word)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), "")
