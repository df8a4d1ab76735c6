"""KServe V2 over HTTP/REST with Triton's extensions, and the static page (docs/v2_protocol.md)."""
