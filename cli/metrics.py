"""``vigil metrics``: the Prometheus exporter, and one scrape printed."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer
from prometheus_client import generate_latest

from cli.common import EXIT_NOT_FOUND, err_console, load_settings
from services.metrics import collector, exporter
from tasks.names import QUEUES

app = typer.Typer(help="Prometheus metrics of the pipeline.", no_args_is_help=True)


@app.command("serve")
def serve(
    address: Annotated[
        str | None, typer.Option(help="Bind address (default VIGIL_METRICS_ADDRESS, loopback).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default VIGIL_METRICS_PORT, 9808).")
    ] = None,
) -> None:
    """Serve /metrics until stopped; off loopback a VIGIL_METRICS_TOKEN is required."""
    settings = load_settings()
    address = address or settings.metrics_address
    port = settings.metrics_port if port is None else port
    registry = collector.registry(collector.for_settings(settings, QUEUES))
    try:
        server, thread = exporter.start(registry, address, port, settings.metrics_token)
    except exporter.ExporterAuthError as exc:
        err_console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(EXIT_NOT_FOUND) from None
    print(f"vigil metrics on http://{address}:{server.server_port}/metrics", flush=True)
    try:
        while thread.is_alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


@app.command("show")
def show() -> None:
    """Print one scrape in Prometheus text format."""
    settings = load_settings()
    registry = collector.registry(collector.for_settings(settings, QUEUES))
    sys.stdout.write(generate_latest(registry).decode())
