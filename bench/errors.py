"""The one exception family for bad input: the CLI prints its message as one line and exits with status 2."""


class BenchError(Exception):
    """Bad input or an unusable file; the message names the problem and the fix."""
