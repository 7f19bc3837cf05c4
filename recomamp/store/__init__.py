"""Postgres: the pool, the migration runner and the queries. All of the daemon's state lives here."""
