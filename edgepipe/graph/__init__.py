"""ONNX graph rewrites (attention fusion, tied tables, smoothing, weight-only int4/int8) and checks."""
