"""``vitkit serve RUN_OR_CHECKPOINT``: the attention explorer on http://127.0.0.1:7860/."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from . import HelpFormatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="open a local web page that classifies your images and shows the attention",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best/) or a checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; the default serves this machine only")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload, in MB")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..serve import Explorer, create_app, run_server
    except ImportError as e:
        raise ConfigError(f"vitkit serve needs Starlette and uvicorn ({e}); pip install 'vitkit[serve]'") from None
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port (1-65535)")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb {args.max_upload_mb} must be positive")
    # Load (and so validate) the checkpoint before any port is opened.
    explorer = Explorer(args.checkpoint, max_upload_bytes=int(args.max_upload_mb * 2**20))
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"vitkit serve: {explorer.checkpoint} at http://{shown}:{args.port}/  (Ctrl-C to stop)", flush=True)
    run_server(create_app(explorer), args.host, args.port)
    return 0
