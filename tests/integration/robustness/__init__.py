"""Overload and fault tests against a real in-process server."""
