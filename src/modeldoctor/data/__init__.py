"""Data bundles, built-in and shortcut data sets, object masks."""
