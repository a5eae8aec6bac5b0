"""The station's web view: live line, history, bundle, a JSON API, `/metrics` and `/healthz`."""
