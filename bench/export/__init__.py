"""Export trained levels as a VNN-COMP benchmark: ONNX models, VNN-LIB properties, a manifest."""
