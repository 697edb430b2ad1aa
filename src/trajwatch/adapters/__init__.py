"""Engine adapters: turn an engine's state into :class:`~trajwatch.frame.Frame` objects."""
