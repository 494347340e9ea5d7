"""Shared settings of the property-based tests (hypothesis) that fuzz what outsiders send labkit.

Every run draws the same examples (``derandomize``): a fuzz test never passes or fails by luck, and a failure it finds
is found again on every machine until it is fixed. Nothing is kept between runs: no example database, and hypothesis'
own folder is a temporary one, so no ``.hypothesis/`` appears in the checkout.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

_HOME = tempfile.mkdtemp(prefix="lkhyp")
set_hypothesis_home_dir(_HOME)
atexit.register(shutil.rmtree, _HOME, True)


def fuzz(max_examples: int) -> settings:
    """Settings for a fuzz test of ``max_examples`` inputs: the same inputs every run, no time limit per input."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
