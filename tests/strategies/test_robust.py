import pytest
import torch

from fedumm.errors import ConfigError
from fedumm.strategies import ClientUpdate, FedAvg
from fedumm.strategies.robust import (
    Krum,
    KrumParams,
    Median,
    TrimmedMean,
    TrimmedMeanParams,
    krum_scores,
    trim_count,
)


def _updates(global_state, client_deltas):
    """Client states = global + delta; every client has 10 samples."""
    return [ClientUpdate(i, 10, {k: global_state[k] + d[k] for k in global_state}) for i, d in enumerate(client_deltas)]


def test_median_even_count_averages_the_two_middle_values():
    # Prepare: global [1, 1]; deltas per coordinate: [1, 3, 2, 10] and [5, -1, 0, 2]
    g = {"w": torch.tensor([1.0, 1.0])}
    updates = _updates(g, [{"w": torch.tensor(v)} for v in ([1.0, 5.0], [3.0, -1.0], [2.0, 0.0], [10.0, 2.0])])
    # Execute
    new = Median().aggregate(g, updates, 1)
    # Assert: sorted [1,2,3,10] -> (2+3)/2 = 2.5; sorted [-1,0,2,5] -> (0+2)/2 = 1; plus global 1
    assert torch.allclose(new["w"], torch.tensor([3.5, 2.0]))


def test_median_odd_count():
    g = {"w": torch.zeros(1)}
    new = Median().aggregate(g, _updates(g, [{"w": torch.tensor([v])} for v in (4.0, -3.0, 1.0)]), 1)
    assert new["w"].item() == pytest.approx(1.0)  # sorted [-3, 1, 4]


@pytest.mark.parametrize(
    ("beta", "expected"),
    [
        (0.0, 2.4),  # k = 0: mean (1 + 3 + 2 + 10 - 4)/5 = 2.4
        (0.2, 2.0),  # k = floor(1.0) = 1: sorted [-4,1,2,3,10] -> mean(1,2,3) = 2
        (0.3, 2.0),  # k = floor(1.5) = 1
        (0.4, 2.0),  # k = 2: the median, 2
    ],
)
def test_trimmed_mean_hand_computed(beta, expected):
    g = {"w": torch.zeros(1)}
    updates = _updates(g, [{"w": torch.tensor([v])} for v in (1.0, 3.0, 2.0, 10.0, -4.0)])
    new = TrimmedMean(TrimmedMeanParams(beta=beta)).aggregate(g, updates, 1)
    assert new["w"].item() == pytest.approx(expected)


def test_trim_count_is_floor_without_float_surprises():
    assert [trim_count(10, 0.3), trim_count(4, 0.25), trim_count(3, 0.25), trim_count(7, 0.49)] == [3, 1, 0, 3]


def test_krum_scores_hand_computed():
    # 1-D points 0, 1, 2, 4, 20; f = 1 -> each score sums the n - f - 2 = 2 smallest squared distances
    # 0: {1, 4, 16, 400} -> 5;  1: {1, 1, 9, 361} -> 2;  2: {4, 1, 4, 324} -> 5
    # 4: {16, 9, 4, 256} -> 13; 20: {400, 361, 324, 256} -> 580
    scores = krum_scores([torch.tensor([v]) for v in (0.0, 1.0, 2.0, 4.0, 20.0)], f=1)
    assert scores == pytest.approx([5.0, 2.0, 5.0, 13.0, 580.0])


def test_krum_selects_lowest_score_and_multikrum_averages():
    g = {"w": torch.tensor([10.0])}
    deltas = [{"w": torch.tensor([v])} for v in (0.0, 1.0, 2.0, 4.0, 20.0)]
    krum = Krum(KrumParams(f=1))
    assert krum.aggregate(g, _updates(g, deltas), 1)["w"].item() == pytest.approx(11.0)  # 10 + delta of client 1
    assert krum.last_selected == [1]
    multi = Krum(KrumParams(f=1, m=3))
    # scores 2 (client 1), 5 (client 0), 5 (client 2): 10 + mean(1, 0, 2) = 11
    assert multi.aggregate(g, _updates(g, deltas), 1)["w"].item() == pytest.approx(11.0)
    assert multi.last_selected == [1, 0, 2]


def test_krum_distances_span_all_keys():
    # (a, b) deltas: c0 (0,0), c1 (0,3), c2 (1,0), c3 (5,0); f = 0 -> 2 nearest
    # squared distances: 01: 9, 02: 1, 03: 25, 12: 10, 13: 34, 23: 16
    # scores: c0 1+9 = 10, c1 9+10 = 19, c2 1+10 = 11, c3 16+25 = 41 -> c0
    g = {"a": torch.zeros(1), "b": torch.zeros(1)}
    pts = [(0.0, 0.0), (0.0, 3.0), (1.0, 0.0), (5.0, 0.0)]
    krum = Krum(KrumParams(f=0))
    new = krum.aggregate(g, _updates(g, [{"a": torch.tensor([a]), "b": torch.tensor([b])} for a, b in pts]), 1)
    assert krum.last_selected == [0] and new["a"].item() == 0.0 and new["b"].item() == 0.0


def test_krum_needs_more_than_2f_plus_2_clients():
    g = {"w": torch.zeros(1)}
    updates = _updates(g, [{"w": torch.tensor([float(i)])} for i in range(4)])
    with pytest.raises(ConfigError, match=r"federation\.strategy\.f: .*more than 2f \+ 2 = 4 clients per round, got 4"):
        Krum(KrumParams(f=1)).aggregate(g, updates, 1)
    with pytest.raises(ConfigError, match=r"federation\.strategy\.m"):
        Krum(KrumParams(f=0, m=5)).aggregate(g, updates, 1)


def test_krum_default_f_is_the_largest_the_round_allows():
    krum = Krum()
    assert [krum.byzantine_count(n) for n in (3, 4, 5, 6, 16)] == [0, 0, 1, 1, 6]
    with pytest.raises(ConfigError):
        krum.byzantine_count(2)


HONEST = (0.98, 1.0, 1.02, 0.99, 1.01)


@pytest.mark.parametrize(
    ("strategy", "within"),
    [
        (Median(), 0.1),
        (TrimmedMean(TrimmedMeanParams(beta=0.2)), 0.1),  # k = floor(0.2 * 6) = 1 per side
        (Krum(KrumParams(f=1)), 0.1),
        (Krum(KrumParams(f=1, m=4)), 0.1),
        (FedAvg(), None),
    ],
    ids=["median", "trimmed_mean", "krum", "multi_krum", "fedavg"],
)
def test_one_client_scaling_its_update_by_1e6(strategy, within):
    # Prepare: 5 honest clients near 1.0 per coordinate, 1 attacker at 1e6 x 1.0; global at 0
    g = {"w": torch.zeros(3), "b": torch.zeros(1)}
    deltas = [{"w": torch.full((3,), v), "b": torch.tensor([v])} for v in HONEST]
    deltas.insert(2, {"w": torch.full((3,), 1e6), "b": torch.tensor([1e6])})
    # Execute
    new = strategy.aggregate(g, _updates(g, deltas), 1)
    # Assert: robust rules stay near 1; FedAvg's mean is (5 + 1e6)/6 ≈ 166,667
    for value in torch.cat([new["w"], new["b"]]).tolist():
        if within is None:
            assert value > 1e4
        else:
            assert abs(value - 1.0) < within
    if isinstance(strategy, Krum):
        assert 2 not in strategy.last_selected  # the attacker's update is never picked


@pytest.mark.parametrize(("f", "m", "expected"), [(1, 1, 5), (None, 1, 3), (1, 3, 5), (0, 4, 4), (2, 1, 7)])
def test_krum_says_how_many_updates_a_round_needs(f, m, expected):
    krum = Krum(KrumParams(f=f, m=m), num_clients=8)
    assert krum.min_updates() == expected
    assert FedAvg().min_updates() == 1
