"""Errors shared by the checkpoint loader and the manifest check (a module of its own, so
that ``ranking.checkpoint`` can write manifests without an import cycle)."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or unreadable; the message says which."""
