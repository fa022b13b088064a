"""ε of the clipped, noised uploads (privacy/accounting.py) against the exact ε of one Gaussian mechanism, the
composition of Gaussian releases, and the one-line error without the `privacy` extra."""

import math
import sys

import pytest

from locfedmix.errors import UserError
from locfedmix.privacy.accounting import DELTA, release_epsilon


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact ε of one Gaussian mechanism with sensitivity/std = μ at δ (Balle & Wang 2018, Theorem 8), by
    bisection on δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ)."""
    phi = lambda t: 0.5 * math.erfc(-t / math.sqrt(2))
    low, high = 0.0, 500.0
    for _ in range(200):
        eps = (low + high) / 2
        if phi(mu / 2 - eps / mu) - math.exp(eps) * phi(-mu / 2 - eps / mu) > delta:
            low = eps
        else:
            high = eps
    return high


@pytest.mark.parametrize("sigma", [0.3, 1.0, 4.0])
def test_one_release_costs_at_least_the_exact_gaussian_epsilon_and_little_more(sigma):
    """One upload clipped to C with noise σC changes by up to 2C when the input is replaced: a Gaussian mechanism with
    μ = 2/σ. The RDP bound sits above the exact ε (it is a bound) and within 20 % of it."""
    exact = analytic_gaussian_epsilon(2 / sigma, DELTA)
    assert exact <= release_epsilon(sigma) <= 1.2 * exact


def test_r_releases_cost_what_one_release_at_noise_divided_by_root_r_does():
    """Composing R Gaussian releases of the same sample is one Gaussian release at σ/√R (RDP adds α/(2z²) R times)."""
    for sigma, releases in ((0.3, 3), (2.0, 20)):
        assert release_epsilon(sigma, releases) == pytest.approx(release_epsilon(sigma / releases ** 0.5), rel=1e-9)
    assert release_epsilon(0.3, 3) > release_epsilon(0.3) and release_epsilon(0.3, 0) == 0.0
    assert release_epsilon(0.0) == math.inf


def test_accounting_without_opacus_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus.accountants", None)
    with pytest.raises(UserError, match=r"locfedmix\[privacy\]"):
        release_epsilon(0.3)
