"""The daemon: the scheduler loop, the workers, the run pipeline, reload and shutdown."""
