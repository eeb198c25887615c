"""Privacy accounting of federated rounds through Google's ``dp-accounting``.

Each round is one step of the Poisson-subsampled Gaussian mechanism: every client takes part
with probability q (``federation.fraction_fit`` under DP) and the sum of the clipped updates
gets noise of multiplier z. T rounds compose as ``SelfComposedDpEvent(PoissonSampledDpEvent(q,
GaussianDpEvent(z)), T)``; epsilon at delta comes from the Rényi-DP accountant (``rdp``,
Mironov 2017) or the privacy-loss-distribution accountant (``pld``, tighter, slower).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Literal

from fedumm.errors import ConfigError

if TYPE_CHECKING:
    import dp_accounting

Kind = Literal["rdp", "pld"]

# The library's default orders from 2 on: below 2 its series does not converge for large q (it
# logs a warning per order and drops them), and the optimum lies above 2 in that regime anyway.
RDP_ORDERS = tuple(1 + x / 10 for x in range(10, 100)) + tuple(range(11, 64)) + (80, 96, 128, 256, 512, 1024)


def _library():
    """dp-accounting, loaded on first use (it adds about a second to every import of fedumm)."""
    try:
        import dp_accounting
        from dp_accounting import pld, rdp  # noqa: F401  (submodules the calls below reach)
    except ImportError:
        raise ConfigError("privacy.level=client needs the privacy extra: pip install 'fedumm[privacy]'") from None
    return dp_accounting


def _accountant(kind: Kind) -> dp_accounting.PrivacyAccountant:
    library = _library()
    return library.rdp.RdpAccountant(list(RDP_ORDERS)) if kind == "rdp" else library.pld.PLDAccountant()


def round_event(sample_rate: float, noise_multiplier: float, rounds: int) -> dp_accounting.DpEvent:
    """The DP event of ``rounds`` rounds."""
    library = _library()
    step: dp_accounting.DpEvent = library.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1:
        step = library.PoissonSampledDpEvent(sample_rate, step)
    return library.SelfComposedDpEvent(step, rounds)


def epsilon(kind: Kind, sample_rate: float, noise_multiplier: float, rounds: int, delta: float) -> float:
    """epsilon after ``rounds`` rounds at ``delta`` (0 rounds: 0; z = 0: infinite)."""
    if rounds == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    accountant = _accountant(kind)
    accountant.compose(round_event(sample_rate, noise_multiplier, rounds))
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=64)  # every client of a run resolves the same plan
def calibrate_noise(kind: Kind, sample_rate: float, target_epsilon: float, delta: float, rounds: int) -> float:
    """The smallest z whose epsilon after ``rounds`` rounds is at most ``target_epsilon`` (the
    library's bisection, to 0.01% of z)."""
    library = _library()
    z = library.calibrate_dp_mechanism(
        lambda: _accountant(kind),
        lambda z: round_event(sample_rate, z, rounds),
        target_epsilon,
        delta,
        library.LowerEndpointAndGuess(1e-3, 1.0),
        tol=1e-5,
    )
    return float(z)


class Accountant:
    """The running budget of one run: rounds spent so far, epsilon now and after the next one."""

    def __init__(self, kind: Kind, sample_rate: float, noise_multiplier: float, delta: float, rounds: int = 0):
        self.kind = kind
        self.sample_rate = sample_rate
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.rounds = rounds

    def epsilon(self, rounds: int | None = None) -> float:
        return epsilon(
            self.kind, self.sample_rate, self.noise_multiplier, self.rounds if rounds is None else rounds, self.delta
        )

    def spend(self) -> None:
        self.rounds += 1
