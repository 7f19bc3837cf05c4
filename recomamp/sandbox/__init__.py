"""Stand-ins for the outside world, for the demo and the tests: the AMC/LWA simulator, an embedded
Postgres (pgserver) and a local Snowflake emulator (fakesnow in server mode)."""
