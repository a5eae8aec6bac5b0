"""Clients of a station or of the one-frame path: camera, results subscriber, load generator, bench, inspect."""
