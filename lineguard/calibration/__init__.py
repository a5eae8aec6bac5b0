"""lineguard calibration: thresholds, score normalisation, INT8 tables and evaluation metrics."""
