"""The exception tree of mmembed.

Every error the library raises on purpose derives from :class:`MMEmbedError`, so callers (the CLI,
the service) can tell a user mistake from a bug. Third-party errors are translated at the boundary
into one of these, with a message that says where the problem is and what would be valid.
"""

from __future__ import annotations

from dataclasses import dataclass


class MMEmbedError(Exception):
    """Base class of every error mmembed raises on purpose."""


class ConfigError(MMEmbedError):
    """A configuration value is missing, unknown or of the wrong type."""


class MissingDependencyError(MMEmbedError):
    """An optional dependency is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Location:
    """Where a data problem is: a file, and optionally a line, a field and an item id."""

    file: str | None = None
    line: int | None = None
    field: str | None = None
    item: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(str(self.file) + (f":{self.line}" if self.line is not None else ""))
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.item is not None:
            parts.append(f"item {self.item!r}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts)


class DataError(MMEmbedError):
    """A data file or record is malformed. The message names file, line, field and item."""

    def __init__(self, message: str, location: Location | None = None):
        self.reason = message
        self.location = location or Location()
        where = str(self.location)
        super().__init__(f"{where}: {message}" if where else message)


class ImageError(DataError):
    """An image is missing, unreadable, too large, or outside its root."""


class IndexMismatchError(MMEmbedError):
    """A saved index does not fit what it is used with (dimension, encoder, format version)."""


class ModelError(MMEmbedError):
    """A model cannot be built, loaded or used with the given input."""


class ArgumentError(MMEmbedError, ValueError):
    """A library function got arguments that do not fit together (a count, a shape or a value out
    of range); the message names the argument. Also a :class:`ValueError`, as Python's own are."""
