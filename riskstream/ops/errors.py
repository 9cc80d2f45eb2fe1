"""The start-up failure every check raises: one message saying what to fix (the CLI prints it as it is)."""


class StartupError(Exception):
    pass
