"""Browser tests skip on a machine without Chromium, but never where MODELDOCTOR_REQUIRE_BROWSER is set (CI)."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest

REQUIRED = "MODELDOCTOR_REQUIRE_BROWSER"


def skip_or_fail(missing: str) -> None:
    """Skip for ``missing``, or fail when the environment requires the browser tests to run."""
    if os.environ.get(REQUIRED):
        pytest.fail(f"{missing}, and {REQUIRED} is set: the browser tests must run here")
    pytest.skip(missing)


def chromium() -> str:
    """The Chromium binary (skip or fail without one)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        skip_or_fail("chromium is not installed (Debian: chromium)")
    assert found is not None
    return found


def selenium_webdriver() -> ModuleType:
    """``selenium.webdriver`` (skip or fail without it)."""
    try:
        return importlib.import_module("selenium.webdriver")
    except ImportError:
        skip_or_fail("selenium is not installed (pip install selenium)")
        raise
