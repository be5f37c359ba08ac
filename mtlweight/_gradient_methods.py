"""Registration and re-export of the gradient-methods strategies (filled in by issue 6)."""

from __future__ import annotations

__all__: list[str] = []
