"""Backends: what turns an ONNX file into an engine. Each is imported only when used."""
