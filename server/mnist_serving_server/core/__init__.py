"""The core: registry, batcher, runtime, dataplane, images.

Never imports a transport (grpc, an HTTP framework); `make lint` enforces it.
"""
