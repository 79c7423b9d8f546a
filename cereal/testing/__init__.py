"""Helpers for testing applications built on cereal."""

from cereal.testing.memory import MemoryDriver, MemoryStore

__all__ = ["MemoryDriver", "MemoryStore"]
