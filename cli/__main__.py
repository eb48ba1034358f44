"""``python -m cli``: the ``voxline`` command."""

from cli.main import app

app()
