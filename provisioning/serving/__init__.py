"""Serving: finding a verified engine for an inference process, and publishing engines to servers."""
