"""lineguard: explainable industrial anomaly detection at line rate.

Sub-packages: ``export`` (checkpoints → bundles), ``calibration`` (thresholds, metrics, quantized
variants), ``runtime`` (the station: torch-free), ``ddqa``, ``train``, ``synth``, ``demo`` and
``cli``. The version is defined here once; packaging reads it from this line.
"""

__version__ = "0.1.0"
