"""Drain and start-up faults of the server run as a process."""
