"""Segment Anything: checkpoint loading, the ONNX graphs, and their export into a bundle."""
