"""`faramir serve`: the curator's gallery over the cache (`faramir.gallery.app.create_app`, run by uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from faramir.cli.common import fail, handle_errors, note, warn
from faramir.cli.options import Db, WeightsDir


@handle_errors
def serve(
    db: Db = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (another than loopback is warned about).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8765,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every write (labels, finetune).")] = False,
    weights_dir: WeightsDir = None,
):
    """Browse, label and finetune in a local web page: the gallery over the cache.

    Example: faramir serve --db art.lancedb --port 8765

    Open the printed URL in a browser. Thumbnails and finetuned heads go in a folder beside the
    cache (DB.gallery). Writes need the token the page carries; --read-only refuses them all.
    The search box needs the SigLIP text tower in the weights directory (faramir weights
    download --text); it is loaded on the first search, never downloaded by the server.
    """
    try:
        import uvicorn

        from faramir.gallery.app import create_app
        from faramir.gallery.safety import is_loopback
        from faramir.gallery.serving import listening_socket
    except ImportError as ex:
        fail(f"faramir serve needs the 'serve' extra ({ex.name} is missing): pip install 'faramir[serve]'")

    loopback = is_loopback(host)
    if not loopback:
        warn(f"binding {host}: anyone who can reach this machine can browse the cache; writes still "
             f"need the page's token. Use --host 127.0.0.1 to keep it to this machine.")
    gallery = create_app(db, read_only=read_only, loopback_only=loopback, weights_dir=weights_dir)
    try:  # bind first, so the URL printed is the one listening (port 0 picks a free one)
        sock = listening_socket(host, port)
    except OSError as ex:
        fail(f"cannot listen on {host}:{port} ({ex.strerror}); choose another --port or --host")
    bound = sock.getsockname()[1]
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    print(f"faramir gallery on http://{'[' + shown + ']' if ':' in shown else shown}:{bound}/"
          f"{' (read-only)' if read_only else ''}", flush=True)
    note("Press Ctrl+C to stop.")
    server = uvicorn.Server(uvicorn.Config(gallery, log_level="warning", lifespan="off"))
    server.run(sockets=[sock])
