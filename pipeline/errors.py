"""Errors the user fixes: a path that is not there, a folder that cannot be written, a model name
that is not a model. Imports nothing, so the torch-only core can raise them too."""

from __future__ import annotations


class UserFacingError(Exception):
    """A problem in what the user asked for, not in the code. The message is one line that names the
    thing (a key, a path) and the fix; entry points print it without a traceback
    (``pipeline.cli.run_main``; ``--debug`` shows the traceback)."""
