"""trajwatch.replay."""
