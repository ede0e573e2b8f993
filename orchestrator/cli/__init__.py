"""``sgctl``, the operator CLI (entrypoint ``orchestrator.cli:main``)."""

from orchestrator.cli.main import EXIT_CODES, cli, exit_code_for, main

__all__ = ["EXIT_CODES", "cli", "exit_code_for", "main"]
