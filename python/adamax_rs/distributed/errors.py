"""The errors a collective call raises on the ranks where nothing was wrong.

When one rank's input is bad, that rank raises the usual ``TypeError`` or ``ValueError``
naming the parameter, and every other rank raises one of these, naming the failing rank. The
class matches the culprit's (``OtherRankTypeError`` is a ``TypeError``), so an
``except ValueError:`` around a step takes the same branch on every rank and the ranks stay
in step.
"""

from __future__ import annotations

__all__ = ["OtherRankError", "OtherRankTypeError", "OtherRankValueError"]


class OtherRankError(Exception):
    """A collective call failed on another rank; nothing changed on this one.

    Attributes
    ----------
    ranks : tuple of int
        The ranks where the call failed (the message quotes the error of the first).
    """

    def __init__(self, message: str, ranks: tuple[int, ...]) -> None:
        super().__init__(message)
        self.ranks = ranks


class OtherRankTypeError(OtherRankError, TypeError):
    """Raised on the other ranks when the failing rank raised a ``TypeError``."""


class OtherRankValueError(OtherRankError, ValueError):
    """Raised on the other ranks when the failing rank raised a ``ValueError``."""
