"""Error feedback: what was sent plus the final residual equals the sum of the true deltas,
over several rounds and every codec; without it, top-k loses that mass for good."""

from __future__ import annotations

import pytest
import torch

from fedumm.compression import build_codec, compress
from fedumm.compression.feedback import compensate, next_residual


def _deltas(rounds: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    return [{"a": torch.randn(8, 4, generator=gen), "b": 0.01 * torch.randn(5, generator=gen)} for _ in range(rounds)]


@pytest.mark.parametrize(("name", "wire"), [("int8", torch.float32), ("int4", torch.float16), ("topk", torch.float32)])
def test_sent_plus_residual_is_the_sum_of_the_true_deltas(name, wire):
    # Prepare: 6 rounds of deltas, a codec, an empty residual.
    codec, deltas = build_codec(name, 0.1), _deltas(6)
    residual: dict[str, torch.Tensor] = {}
    sent_total = {k: torch.zeros_like(v) for k, v in deltas[0].items()}
    # Execute
    for round_num, delta in enumerate(deltas):
        _, sent, residual = compress(delta, codec, wire, seed=round_num, residual=residual)
        sent_total = {k: sent_total[k] + sent[k] for k in sent}
    # Assert: sum(sent) + e_T = sum(delta), to float tolerance, and the residual is not trivial.
    true_total = {k: sum(d[k] for d in deltas) for k in deltas[0]}
    for key in true_total:
        assert torch.allclose(sent_total[key] + residual[key], true_total[key], atol=1e-5), key
    assert any(float(residual[k].abs().max()) > 1e-4 for k in residual)


def test_without_feedback_topk_drops_mass_for_good():
    codec, deltas = build_codec("topk", 0.1), _deltas(6)
    sent_total = torch.zeros(8, 4)
    for round_num, delta in enumerate(deltas):
        _, sent, residual = compress(delta, codec, torch.float32, seed=round_num)
        sent_total += sent["a"]
        assert residual is None
    true_total = sum(d["a"] for d in deltas)
    assert float((sent_total - true_total).abs().max()) > 0.5


def test_a_key_not_sent_this_round_keeps_its_residual():
    # Prepare: residuals for a and b; this round trains a only.
    residual = {"a": torch.tensor([0.5, -0.5]), "b": torch.tensor([1.0])}
    corrected = compensate({"a": torch.tensor([1.0, 1.0])}, residual)
    # Execute: the receiver got 1.25 and 0.5 of p = (1.5, 0.5).
    after = next_residual(corrected, {"a": torch.tensor([1.25, 0.5])}, residual)
    # Assert: a's residual is p - sent; b's stays.
    assert corrected["a"].tolist() == [1.5, 0.5]
    assert after["a"].tolist() == [0.25, 0.0] and after["b"].tolist() == [1.0]
