"""The one exception type users see: the CLI prints its message and exits 1, no traceback."""


class SqueezeNetError(Exception):
    """A user-facing failure: bad input, missing data, incompatible checkpoint.

    The message must name the problem and what to do about it.
    """


class UsageError(SqueezeNetError):
    """A bad flag or value; the CLI exits 2 for these, like argparse does."""
