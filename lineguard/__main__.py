"""``python -m lineguard``: the same as the ``lineguard`` command."""

import sys

from lineguard.cli.main import main

sys.exit(main())
