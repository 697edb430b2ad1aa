"""trajwatch.streaming."""
