"""Reliability checks run from make targets (`make hostile`, `make load`): each drives the real app and CLI."""
