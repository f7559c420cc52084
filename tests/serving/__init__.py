"""Serving: resolving engines for a server, exporting them to Triton."""
