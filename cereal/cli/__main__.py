"""``python -m cereal.cli``: the ``cereal`` command."""

import sys

from cereal.cli import main

sys.exit(main())
