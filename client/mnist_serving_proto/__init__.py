"""Generated protobuf and gRPC stubs for the mnist-serving wire contract (`make proto`)."""
