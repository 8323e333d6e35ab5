"""Hypothesis profiles for the property tests (tests/test_properties.py); imported by conftest.py.

- 'ci' (the default): a bounded example budget per test, a fixed seed (derandomize) so that a CI run is
  reproducible and a failure reproduces by rerunning the same command, no example database, no deadline
  (kernel timings vary on a shared 2-core machine).
- 'long': thousands of examples per test with random seeds, the failing examples saved in .hypothesis/
  and replayed first on the next run. For manual runs, e.g.
      python -m pytest tests/test_properties.py -n 2 --hypothesis-profile long
- 'dev': a handful of examples, for editing the strategies.

Select with pytest's --hypothesis-profile NAME (hypothesis's own pytest option) or the environment
variable FASTCONV_HYPOTHESIS_PROFILE.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# The kernel tests take conftest's function-scoped `backend` fixture, which selects a backend once per
# test (not per example); that is intended, so the health check about it is off. Strategies filter
# (assume) a few percent of draws, and big examples can be slow to generate on a loaded machine.
_SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much]

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=_SUPPRESS)
settings.register_profile("long", max_examples=3000, deadline=None, print_blob=True,
                          suppress_health_check=_SUPPRESS)
settings.register_profile("dev", max_examples=10, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("FASTCONV_HYPOTHESIS_PROFILE", "ci"))
