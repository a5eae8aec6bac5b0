"""``lineguard demo``: the embedded default bundle, built here from generated parts, served live."""
