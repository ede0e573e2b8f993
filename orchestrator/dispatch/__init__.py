"""Dispatch: the gRPC streams from the control plane to the site agents."""

from orchestrator.dispatch.dispatcher import Dispatcher, DispatcherOptions, owner_of

__all__ = ["Dispatcher", "DispatcherOptions", "owner_of"]
