"""`hybrid-ad serve`: the command, registered on the main app by `register`.

fastapi and uvicorn are imported only when the command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


def serve_command(
    model: Annotated[
        Path, typer.Option("--model", help="Saved model directory (a registry's current works).")
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port.", min=1, max=65535)] = 8000,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding the bearer token clients must send."),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option("--state", help="Directory for the behavioural state's checkpoints."),
    ] = None,
) -> None:
    """Serve the model over HTTP: POST /v1/score, /healthz, /readyz, /v1/model, /metrics,
    POST /v1/admin/reload (or SIGHUP). SIGTERM stops gracefully after a last checkpoint."""
    from hybrid_ad.service.app import serve

    serve(model, host, port, token_file, state)


def register(app: typer.Typer, user_errors: Callable[[F], F]) -> None:
    """Add `serve` to the main command line, with its one-line error handling."""
    app.command("serve")(user_errors(serve_command))
