"""Sovereign Grid: a multi-site workload orchestrator."""
