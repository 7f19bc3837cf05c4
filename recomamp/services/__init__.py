"""Application operations shared by the daemon and the CLI: each lives once, here."""
