"""Prometheus metrics: ``settings`` (the ``metrics:`` config section, no library
import) and ``prometheus`` (the only module that imports prometheus_client)."""
