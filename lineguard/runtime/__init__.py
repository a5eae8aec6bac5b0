"""lineguard runtime: everything that runs on the inspection station.

Grouped by role: ``bundle`` (format and engines), ``stages`` (the models and what is built from
their outputs), ``inspection`` (one frame: record, defects, explanation), ``station`` (serving)
and ``clients``. Imports numpy, onnxruntime, pyzmq, opencv, pillow and tokenizers only: never torch.
"""
