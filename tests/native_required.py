"""The compiled module for tests that need it: a skip outside CI, a failure in CI (CI=true).

A test that can only run with our native kernels calls `native_or_skip()`. Where the module cannot
be built a developer's run skips with the reason; CI sets CI=true, where a missing build is a broken
setup, never a quiet skip.
"""

from __future__ import annotations

import os

import pytest


def native_or_skip():
    from gemma_mtp import native

    module = native.module()
    if module is None:
        reason = f"the native kernels are unavailable: {native.why_unavailable()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: a missing native build fails the suite)")
        pytest.skip(reason)
    return module
