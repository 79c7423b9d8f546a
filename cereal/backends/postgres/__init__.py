"""The PostgreSQL backend."""

from cereal.backends.postgres.driver import PostgresDriver

__all__ = ["PostgresDriver"]
