"""Maintainer tools that run against gie's own source tree (``python -m gie_cli.tools.layering``)."""
