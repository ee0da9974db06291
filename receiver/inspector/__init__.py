"""The inspector: web pages over the store (`/inspect`), behind a token."""

from .pages import Inspector

__all__ = ["Inspector"]
