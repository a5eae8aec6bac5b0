"""The ``lineguard`` command line: one module per command group, each registered the same way."""
