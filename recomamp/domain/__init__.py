"""Pure decisions, apart from I/O: schedules and windows, retry classification, identifiers, run states."""
