"""What the capabilities share: settings, auth, metadata, limits, logs, metrics, errors."""
