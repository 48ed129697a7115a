"""Tests of :mod:`pyro_iterative.data.corpora` (the synthetic corpus and the loader of user count matrices)."""

import numpy as np
import pytest
import torch

from pyro_iterative.data import load_counts, synthetic_corpus


def test_synthetic_corpus():
    state = torch.get_rng_state()
    first = synthetic_corpus(50, vocab_size=20, num_topics=4, mean_length=8, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(first, synthetic_corpus(50, vocab_size=20, num_topics=4, mean_length=8, seed=5))
    assert not torch.equal(first, synthetic_corpus(50, vocab_size=20, num_topics=4, mean_length=8, seed=6))
    assert first.shape == (50, 20) and first.dtype == torch.float32
    assert (first >= 0).all() and torch.equal(first, first.round())
    assert first.sum(-1).mean().item() == pytest.approx(8, rel=0.3)
    short = synthetic_corpus(200, vocab_size=10, mean_length=0.3, seed=0)
    assert (short.sum(-1) >= 1).all()  # Poisson zeros are raised to one word
    assert synthetic_corpus(3, seed=0, dtype=torch.float64).dtype == torch.float64
    for kwargs in ({"num_documents": 0}, {"num_documents": 2, "vocab_size": 1}, {"num_documents": 2, "mean_length": 0}):
        with pytest.raises(ValueError):
            synthetic_corpus(**kwargs)


def test_load_counts(tmp_path):
    counts = np.array([[0, 3, 1], [2, 0, 0]], dtype=np.int32)
    np.save(tmp_path / "counts.npy", counts)
    loaded = load_counts(tmp_path / "counts.npy")
    assert loaded.dtype == torch.float32 and torch.equal(loaded, torch.tensor(counts, dtype=torch.float32))
    np.savez(tmp_path / "corpus.npz", train=counts.astype(np.uint8), test=counts.astype(np.float64))
    assert torch.equal(load_counts(tmp_path / "corpus.npz", key="train"), loaded)  # uint8 stays counts, not / 255
    assert torch.equal(load_counts(tmp_path / "corpus.npz", key="test"), loaded)
    np.save(tmp_path / "bytes.npy", counts.astype(np.uint8) * 80)
    assert torch.equal(load_counts(str(tmp_path / "bytes.npy")), loaded * 80)
    assert torch.equal(load_counts(torch.tensor(counts, dtype=torch.uint8)), loaded)
    negative = counts.copy()
    negative[1, 2] = -1
    np.save(tmp_path / "negative.npy", negative)
    with pytest.raises(ValueError, match=r"non-negative integers.*1 value\(s\) are negative.*-1.0 at row 1, column 2"):
        load_counts(tmp_path / "negative.npy")
    np.save(tmp_path / "fractional.npy", counts + np.array([[0, 0, 0.5], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"fractional\.npy.*non-negative integers.*fractional.*1.5 at row 0, column 2"):
        load_counts(tmp_path / "fractional.npy")
    with pytest.raises(FileNotFoundError):
        load_counts(tmp_path / "missing.npy")
