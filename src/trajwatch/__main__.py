"""``python -m trajwatch`` runs the ``trajwatch`` command."""

from trajwatch.cli import entry_point

entry_point()
