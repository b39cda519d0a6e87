"""How the generated-input tests run: derandomized and bounded, so CI runs the same examples every time.

FLEET_FUZZ_EXAMPLES=5000 explores further (that many examples, at random) when looking for new cases by hand.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXPLORE = int(os.environ.get("FLEET_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int, *, large_data: bool = True) -> settings:
    """Hypothesis settings for `examples` examples (FLEET_FUZZ_EXAMPLES instead, at random, when set); no
    deadline and no example database. `large_data` lets an example be as large as hostile input gets."""
    checks = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
    if large_data:
        checks.insert(1, HealthCheck.data_too_large)
    return settings(
        max_examples=EXPLORE or examples,
        deadline=None,
        derandomize=not EXPLORE,
        database=None,
        suppress_health_check=checks,
    )
