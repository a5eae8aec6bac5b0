"""lineguard runtime: everything that runs on the inspection station.

Imports numpy, onnxruntime, pyzmq, opencv, pillow and tokenizers only: never torch.
"""

__version__ = "0.1.0"
