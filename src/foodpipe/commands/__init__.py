"""Subcommand modules of the ``foodpipe`` CLI (see foodpipe.cli)."""
