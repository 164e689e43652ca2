"""``python -m streams.cli``: the same as the ``freshrec`` command."""

import sys

from streams.cli import main

sys.exit(main())
