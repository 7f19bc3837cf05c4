"""The Snowflake sink: per-user connections, staged UPSERT of result files, schema evolution."""
