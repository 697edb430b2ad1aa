"""trajwatch.monitor."""
