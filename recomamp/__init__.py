"""recomamp: runs Amazon Marketing Cloud workflows on schedules and loads the results into Snowflake."""

__version__ = "0.1.0"
