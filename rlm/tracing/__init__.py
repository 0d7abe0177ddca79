"""Tracing subscribers of a run tree (OpenTelemetry spans: the otel extra)."""
