"""ClientRuntime's seeds; its fit is exercised through the strategies' and finetune tests."""

from fedumm.federation import derive_seed


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(42, 1, 0) == derive_seed(42, 1, 0)
    assert len({derive_seed(42, r, c) for r in range(5) for c in range(5)}) == 25
