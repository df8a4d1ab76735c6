"""Python SDK for mnist-serving."""
