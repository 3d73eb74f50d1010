"""Export vision backbones to ONNX / TensorRT into a versioned Triton model repository."""
