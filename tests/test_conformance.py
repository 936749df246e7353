"""The conformance kit of parlay.testing, run on every backend."""

from __future__ import annotations

import pytest

from parlay import testing


@pytest.mark.parametrize("check", sorted(testing.CHECKS))
def test_conformance(backend: str, check: str) -> None:
    testing.CHECKS[check](backend, n_jobs=2)


def test_check_backend_runs_every_check() -> None:
    testing.check_backend("threads", n_jobs=2)
