"""trajwatch.features."""
