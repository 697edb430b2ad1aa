"""trajwatch.detectors."""
