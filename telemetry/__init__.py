"""Telemetry: logs (`logs`, `redact`), every metric (`metrics`, `backlog`) and traces
(`tracing`, `otel`, `celery_spans`, `trace_context`), used by every room above it."""
