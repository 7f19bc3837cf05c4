"""Alerts that reach a person: webhook deliveries from the durable outbox."""
