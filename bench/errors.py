"""Errors meant for the person at the keyboard.

A ``BenchError`` carries a message that names the problem and the fix; the CLI prints it on one
line and exits with status 2 instead of showing a traceback.
"""


class BenchError(Exception):
    """A user-facing error: bad input, missing files, a tool that is not installed."""
