"""``python -m runtime.cli``: the same as the ``agora`` command."""

import sys

from runtime.cli.main import main

sys.exit(main())
