"""Spans recorded in memory: the API layer's tracing hooks on, read back by tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry import tracing


class RecordedSpans:
    """A provider whose finished spans land in memory, enabled for the API layer."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        spans = list(self.exporter.get_finished_spans())
        return [span for span in spans if name is None or span.name == name]

    @contextmanager
    def job(self) -> Iterator[ReadableSpan]:
        """A parent span standing in for the job's consumer span, made current."""
        with self.tracer.start_as_current_span("job") as span:
            yield span  # type: ignore[misc]


@contextmanager
def recorded_spans() -> Iterator[RecordedSpans]:
    spans = RecordedSpans()
    tracing.enable(spans.provider)
    try:
        yield spans
    finally:
        tracing.disable()
        spans.provider.shutdown()
