"""``python -m orchestrator.local``: the embedded default's supervisor process."""

import sys

from orchestrator.local.supervisor import main

sys.exit(main())
