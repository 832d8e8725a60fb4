"""``queuert-sa worker --metrics-port``: the worker's metrics for Prometheus to scrape.

Serves OpenTelemetry metrics through OpenTelemetry's Prometheus exporter
(extra ``prometheus``), from an :class:`~queuert_sa.otel.OtelObserver` added
to the worker's client with a meter provider of its own: the application's
global OpenTelemetry set-up, if any, is left as it is.
"""

from __future__ import annotations

import click

from queuert_sa._context import ContextView


def serve_metrics(client: ContextView, host: str, port: int) -> None:
    """Add a metrics-only OtelObserver to ``client`` and serve its metrics on ``host:port``."""
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from prometheus_client import start_http_server

        from queuert_sa.otel import OtelObserver
    except ImportError as exc:
        raise click.ClickException(
            f"--metrics-port needs OpenTelemetry's SDK and Prometheus exporter ({exc}); "
            "install them with: pip install 'queuert_sa[prometheus]'"
        ) from exc
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader()],
        resource=Resource.create({"service.name": "queuert-sa-worker"}),
    )
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); pick another "
            "--metrics-port, or stop what is using that one."
        ) from exc
    client.add_observer(OtelObserver(meter_provider=provider, traces=False))
    click.echo(f"metrics on http://{host}:{port}/metrics", err=True)
