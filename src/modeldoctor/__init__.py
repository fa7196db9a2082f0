"""Model Doctor: diagnose and treat trained CNN image classifiers."""

__version__ = "0.1.0"
