"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (data, checkpoint, config, arguments): the message says what is wrong and what to do."""
