"""Background duties of a manager, each a small named service with start and stop."""
