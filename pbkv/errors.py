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


class MissingExtra(ImportError, UserError):
    """An optional dependency that the feature asked for is not installed; the message names
    the pip extra that brings it (``pip install 'pbkv[gru]'``)."""


def require(module: str, extra: str, feature: str):
    """Import and return ``module`` (e.g. ``"torch"``), or raise ``MissingExtra`` saying that
    ``feature`` needs it and which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.split(".")[0]:
            raise  # the module is there but one of its own imports is broken: a real bug
        raise MissingExtra(
            f"{feature} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'pbkv[{extra}]'"
        ) from None
