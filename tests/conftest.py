"""Shared test setup: float64 available for the dense oracle, fresh random inputs per run.

Each run draws a new seed (printed in the header); set JAXKEOPS_TEST_SEED to replay one.
"""

import os
import random
import zlib

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

SEED = int(os.environ.get("JAXKEOPS_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"jaxkeops test seed: JAXKEOPS_TEST_SEED={SEED}"


@pytest.fixture
def rng(request):
    """A generator seeded by the run's seed and the test's id (reproducible per test)."""
    return np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])
