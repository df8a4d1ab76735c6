"""Training and ONNX export of the MNIST CNN."""
