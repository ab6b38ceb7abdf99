"""A local attention explorer in the browser (``vitkit serve``); see :mod:`vitkit.serve.app`."""

from .app import Explorer, ServeError, create_app, run_server

__all__ = ["Explorer", "ServeError", "create_app", "run_server"]
