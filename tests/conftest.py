"""Shared pytest/hypothesis configuration for the laurentnet test-suite.

Hypothesis profiles:

* ``default`` — no deadline (sympy arithmetic has a slow first call), a modest number of
  examples so that the whole suite stays fast; derandomised when ``CI`` is set so that CI
  runs are reproducible;
* ``thorough`` — many more examples (``HYPOTHESIS_PROFILE=thorough``) for a local soak.
"""
from __future__ import annotations

import os
import sys

from hypothesis import HealthCheck, settings

# ``tests/strategies.py`` is imported as a plain module by the test files.
sys.path.insert(0, os.path.dirname(__file__))

_COMMON = dict(deadline=None, derandomize=bool(os.environ.get("CI")),
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("default", max_examples=30, **_COMMON)
settings.register_profile("thorough", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
