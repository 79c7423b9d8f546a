"""Helpers shared by the tests: child processes, recording executors, fast timings, waiting."""
