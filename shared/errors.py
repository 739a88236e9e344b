"""The base of errors a user can act on: the CLI prints their message, never a traceback."""


class FleetwatchError(Exception):
    pass
