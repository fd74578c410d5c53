"""`Parameter`: a trainable numpy array and its gradient.

The class lives in the Rust core, so that a step reads ``data`` and ``grad`` of thousands of
parameters without a Python attribute lookup each; see ``help(adamax_rs.Parameter)``.
"""

from __future__ import annotations

from ._core import Parameter

__all__ = ["Parameter"]
