"""Epsilon of the subsampled Gaussian mechanism over rounds, from dp-accounting."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from fedumm.privacy.accountant import Accountant, calibrate_noise, epsilon


@pytest.mark.parametrize(("q", "z", "rounds"), [(0.25, 1.1, 10), (0.5, 2.0, 30), (1.0, 4.0, 5)])
def test_epsilon_is_the_librarys_value(q, z, rounds):
    # Prepare: the same event, composed independently with the library's default orders.
    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    accountant.compose(event, rounds)
    # Execute / Assert
    assert epsilon("rdp", q, z, rounds, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-6)


def test_epsilon_agrees_with_opacus_rdp_analysis():
    # An independent implementation of the same RDP bound (Opacus), on its own orders.
    orders = [1 + x / 10 for x in range(10, 100)] + list(range(11, 64))
    rdp = opacus_rdp.compute_rdp(q=0.1, noise_multiplier=1.0, steps=50, orders=orders)
    theirs, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert epsilon("rdp", 0.1, 1.0, 50, 1e-5) == pytest.approx(theirs, rel=0.05)


def test_more_rounds_cost_more_and_pld_is_tighter():
    assert epsilon("rdp", 0.2, 1.0, 20, 1e-5) > epsilon("rdp", 0.2, 1.0, 10, 1e-5)
    assert epsilon("pld", 0.2, 1.0, 10, 1e-5) < epsilon("rdp", 0.2, 1.0, 10, 1e-5)


def test_no_rounds_cost_nothing_and_no_noise_costs_everything():
    assert epsilon("rdp", 0.5, 1.0, 0, 1e-5) == 0.0
    assert math.isinf(epsilon("rdp", 0.5, 0.0, 3, 1e-5))


@pytest.mark.parametrize("target", [8.0, 3.0, 1.0])
def test_target_epsilon_lands_within_one_percent(target):
    z = calibrate_noise("rdp", 0.25, target, 1e-5, 12)
    reached = epsilon("rdp", 0.25, z, 12, 1e-5)
    assert reached <= target * 1.0001 and reached == pytest.approx(target, rel=0.01)


def test_the_running_accountant_counts_rounds():
    accountant = Accountant("rdp", 0.25, 1.1, 1e-5)
    for _ in range(3):
        accountant.spend()
    assert accountant.rounds == 3
    assert accountant.epsilon() == pytest.approx(epsilon("rdp", 0.25, 1.1, 3, 1e-5))
    assert accountant.epsilon(4) > accountant.epsilon()
