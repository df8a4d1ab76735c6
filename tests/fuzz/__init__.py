"""Hypothesis fuzzing of the servicers against a real in-process server."""
