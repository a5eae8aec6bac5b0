"""The station: wire protocol, scheduling, the ZeroMQ server, result store, artefacts and health."""
