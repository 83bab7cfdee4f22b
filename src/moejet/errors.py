"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (data, checkpoint, config, arguments): the message says what is wrong and what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped the program. ``signum``: which; the message, set by the operation it
    stopped, says what was saved and how to continue."""

    def __init__(self, message: str = "interrupted", signum: int = 2) -> None:  # 2: SIGINT
        super().__init__(message)
        self.signum = signum


def first_line(err: BaseException) -> str:
    """``err``'s message for a one-line error: its first non-empty line, whole (a message is never cut mid-word)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), "")
