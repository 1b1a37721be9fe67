"""The domain exception: what a user did wrong or what went wrong outside the program (and how its messages
word a count).

Library code raises `CharRNNError` (or a subclass) with one clear sentence; the CLI
prints it on one line of stderr and exits 1. Anything else is a bug and keeps its
traceback.
"""


class CharRNNError(Exception):
    """A user-facing error: bad input, a bad file, a failed write."""


def plural(n: int, noun: str) -> str:
    """'1 character', '2 characters', '1,003,854 characters': a count as a user reads it in a message."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
