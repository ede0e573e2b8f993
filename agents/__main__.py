"""``python -m agents``: the same as the ``sg-agent`` command."""

import sys

from agents.cli import main

if __name__ == "__main__":
    sys.exit(main())
