"""``vitkit serve RUN_OR_CHECKPOINT``: the attention explorer on http://127.0.0.1:7860/."""

from __future__ import annotations

import argparse
import errno
import socket

from ..errors import ConfigError
from . import HelpFormatter, add_assume_preprocess


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="open a local web page that classifies your images and shows the attention",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (uses best/) or a checkpoint folder")
    add_assume_preprocess(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind; the default serves this machine only")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload, in MB")
    p.set_defaults(func=run)


def check_port(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go, so that a busy port is one line naming ``--port``
    before the URL is announced (uvicorn would print the URL's promise, then fail). uvicorn binds
    with SO_REUSEADDR as ``socket.create_server`` does, so what passes here binds there."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    try:
        with socket.create_server((host, port), family=family):
            pass
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--port {port}: {host}:{port} is already in use; stop what holds it, or pick another, e.g. "
                f"--port {port + 1 if port < 65535 else 8000}"
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--host {host}: not an address of this machine ({e.strerror})") from None
        raise ConfigError(
            f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); pick another --port"
        ) from None


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
    explorer = Explorer(
        args.checkpoint, max_upload_bytes=int(args.max_upload_mb * 2**20), assume_preprocess=args.assume_preprocess
    )
    check_port(args.host, args.port)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"vitkit serve: {explorer.checkpoint} at http://{shown}:{args.port}/  (Ctrl-C to stop)", flush=True)
    run_server(create_app(explorer), args.host, args.port)
    return 0
