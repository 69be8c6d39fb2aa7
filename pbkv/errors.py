"""The one base class of errors in what a user asked for.

A ``UserError`` is expected: an unknown registry name, a file that is missing or malformed, a
model directory that cannot be loaded, an argument the command cannot use. The ``pbkv`` CLI
prints one ``pbkv: error: <message>`` line for it and exits 2; anything else is a bug and
keeps its traceback. Exception types of the components subclass it next to their usual base
(``class ArtifactError(ValueError, UserError)``), so library callers can go on catching
``ValueError``.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message says what and, where it can, what to do."""
