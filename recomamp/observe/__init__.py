"""Observability: Prometheus metrics, health endpoints, and alerts that reach a person."""
