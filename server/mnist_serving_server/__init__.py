"""The mnist-serving inference server."""
