"""The domain exception: what a user did wrong or what went wrong outside the program.

Library code raises `CharRNNError` (or a subclass) with one clear sentence; the CLI
prints it on one line of stderr and exits 1. Anything else is a bug and keeps its
traceback.
"""


class CharRNNError(Exception):
    """A user-facing error: bad input, a bad file, a failed write."""
