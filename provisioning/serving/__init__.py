"""Serving: finding a verified engine for an inference process, and publishing engines to servers."""

from .resolve import open_engine, resolve_engine

__all__ = ["open_engine", "resolve_engine"]
