"""Placeholder until the shortcut-mnist benchmark data lands (issue 5)."""
