"""Running a flow: settings, batching, recovery, logs, metrics, progress."""
