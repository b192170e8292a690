"""Hypothesis profiles of the fuzz suite: ``ci`` (the default: few examples, derandomized,
so CI is reproducible and its share stays under two minutes) and ``long`` (many random
examples; select it with ``HYPOTHESIS_PROFILE=long``)."""

import os

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, settings  # noqa: E402

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("ci", max_examples=30, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=400, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
