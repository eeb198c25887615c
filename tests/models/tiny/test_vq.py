"""The tiny VQ trainer (fedumm.models.tiny.vq): the same seed gives the same tokenizer whatever
the caller's thread count, and the thread count is given back."""

from __future__ import annotations

import torch

from fedumm.models.tiny.vq import train_vq


def _train(threads: int) -> tuple[dict[str, torch.Tensor], int]:
    torch.set_num_threads(threads)
    torch.manual_seed(123)  # the trainer reseeds; the modules' initialisation is the caller's
    encoder = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)
    decoder = torch.nn.ConvTranspose2d(8, 3, kernel_size=4, stride=4)
    codebook = torch.nn.Embedding(16, 8)
    params = [*encoder.parameters(), *decoder.parameters(), *codebook.parameters()]
    result = train_vq(encoder, decoder, codebook, params, steps=30, batch_size=8, image_size=32, seed=7)
    state = {**encoder.state_dict(), **{f"d.{k}": v for k, v in decoder.state_dict().items()}, "c": codebook.weight}
    assert result.steps == 30 and torch.isfinite(torch.tensor(result.final_loss))
    return {k: v.detach().clone() for k, v in state.items()}, torch.get_num_threads()


def test_the_same_seed_trains_the_same_tokenizer_on_any_thread_count() -> None:
    before = torch.get_num_threads()
    try:
        one, threads_after_one = _train(1)
        two, threads_after_two = _train(2)
    finally:
        torch.set_num_threads(before)
    assert (threads_after_one, threads_after_two) == (1, 2)  # the caller's count is restored
    assert all(torch.equal(one[k], two[k]) for k in one)
    # Unit codebook rows, as the transformers quantizers expect.
    assert torch.allclose(one["c"].norm(dim=-1), torch.ones(16), atol=1e-5)
