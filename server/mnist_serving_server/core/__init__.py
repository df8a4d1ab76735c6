"""The core: registry, batcher, runtime, dataplane, images. Never imports a transport (grpc, HTTP)."""
