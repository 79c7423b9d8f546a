"""Hostile input through the public API, on a real database, one module per kind of input."""
