"""Errors a user can cause: one root, :class:`VisattnError`.

The command line prints a ``VisattnError`` (and an ``OSError``: a missing file, a full disk) as one paragraph and
exits with status 2; anything else is a bug and keeps its traceback. Each class also derives from the built-in
exception it replaces, so ``except ValueError`` / ``except KeyError`` / ``except TypeError`` callers keep working.
"""

from __future__ import annotations


class VisattnError(Exception):
    """Something the user can fix: a flag, a config value, a name, a file's content. The message says what and how."""


class ConfigError(VisattnError, ValueError):
    """A configuration file or value that cannot be used."""


class BadValueError(VisattnError, ValueError):
    """An argument value a builder, block or function cannot take (out of range, wrong size, ...)."""


class BadArgumentError(VisattnError, TypeError):
    """An unknown keyword argument, or a value of the wrong type."""


class UnknownNameError(VisattnError, KeyError):
    """A name that is not registered (block, backbone, data set, ...) or matches nothing (a slot glob, a key)."""

    def __str__(self) -> str:  # KeyError would quote the message as a repr
        return str(self.args[0]) if self.args else ""


class DataError(VisattnError, ValueError):
    """A data set, its files or its options that cannot be used."""


class ExportError(VisattnError, ValueError):
    """An export that could not be made or did not match the eager model (the message has the numbers)."""


class NonFiniteLossError(VisattnError, ValueError):
    """The training loss became NaN or infinite (usually a learning rate too high for the model)."""


def error_text(err: BaseException) -> str:
    """The message of ``err`` as one paragraph (a ``KeyError``'s message unquoted)."""
    text = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
    if text.startswith("Caught ") and "Original Traceback" in text:  # re-raised from a DataLoader worker
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


USER_ERRORS: tuple[type[BaseException], ...] = (VisattnError, OSError)
