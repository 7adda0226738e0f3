"""Embedded infrastructure for local runs and tests: a Tansu broker and Redis."""

from streaming.infra.stack import Stack, StackState, resolve_endpoints

__all__ = ["Stack", "StackState", "resolve_endpoints"]
