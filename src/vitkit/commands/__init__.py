"""One module per ``vitkit`` command, each with ``add_parser(subparsers)``; found by ``vitkit.cli``."""
