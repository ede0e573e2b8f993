"""``python -m orchestrator.cli``: the same as ``sgctl``."""

from orchestrator.cli.main import main

main()
