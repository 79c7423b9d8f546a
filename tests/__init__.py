"""cereal's test suite."""
