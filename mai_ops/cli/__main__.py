"""``python -m mai_ops.cli``: the ``mai-ops`` command where the script is not installed."""

import sys

from mai_ops.cli import main

sys.exit(main())
