"""Tests of :mod:`pyro_iterative.data.chorales`: the synthetic sequences, the loader of user sequences, the mask and
the Bach chorales parsed from ``music21`` (on a few chorales only, into a temporary cache)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_iterative.data import (
    chorales,
    cut_sequences,
    load_chorales,
    load_sequences,
    nan_padded,
    sequence_mask,
    synthetic_sequences,
)
from pyro_iterative.models import DMM

# ---------------------------------------------------------------- synthetic sequences and the mask


def test_synthetic_sequences_shapes_seed_and_padding():
    state = torch.get_rng_state()
    sequences, lengths = synthetic_sequences(30, max_length=12, data_dim=5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert sequences.shape == (30, 12, 5) and sequences.dtype == torch.float32
    assert lengths.shape == (30,) and lengths.dtype == torch.int64
    assert int(lengths.min()) >= 6 and int(lengths.max()) <= 12  # min_length defaults to max_length // 2
    assert len(set(lengths.tolist())) > 1  # lengths vary
    assert torch.equal(sequences, sequences.round()) and bool(((sequences == 0) | (sequences == 1)).all())
    padding = ~sequence_mask(lengths, 12)
    assert bool((sequences[padding] == 0).all()) and bool(padding.any())
    assert sequences[~padding].sum() > 0
    again, again_lengths = synthetic_sequences(30, max_length=12, data_dim=5, seed=3)
    assert torch.equal(again, sequences) and torch.equal(again_lengths, lengths)
    other, _ = synthetic_sequences(30, max_length=12, data_dim=5, seed=4)
    assert not torch.equal(other, sequences)
    fixed, fixed_lengths = synthetic_sequences(4, max_length=3, data_dim=2, seed=0, min_length=3, dtype=torch.float64)
    assert fixed.dtype == torch.float64 and fixed_lengths.tolist() == [3, 3, 3, 3]


def test_synthetic_sequences_are_temporally_correlated():
    """A sticky hidden chain: consecutive steps agree more often than steps of different sequences."""
    sequences, lengths = synthetic_sequences(200, max_length=10, data_dim=6, seed=0, min_length=10, num_states=3)
    same_sequence = (sequences[:, 1:] == sequences[:, :-1]).float().mean()
    across = (sequences[1:] == sequences[:-1]).float().mean()
    assert same_sequence > across + 0.05


@pytest.mark.parametrize(
    "kwargs",
    [{"num": 0}, {"num": 2, "max_length": 0}, {"num": 2, "data_dim": 0}, {"num": 2, "seed": -1},
     {"num": 2, "max_length": 3, "min_length": 4}, {"num": 2, "num_states": 0}, {"num": 2, "dtype": torch.int64}],
)
def test_synthetic_sequences_errors(kwargs):
    with pytest.raises(ValueError):
        synthetic_sequences(**kwargs)


def test_sequence_mask():
    mask = sequence_mask(torch.tensor([3, 1, 0]), 4)
    expected = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert sequence_mask([2, 1]).shape == (2, 2)
    assert sequence_mask(torch.tensor([2.0, 1.0]), 3).tolist() == [[True, True, False], [True, False, False]]
    for lengths, max_length, match in (
        ([5], 4, "more than max_length"),
        ([-1], 4, "non-negative"),
        ([[1]], 4, "1-d"),
        ([1.5], 4, "integers"),
    ):
        with pytest.raises(ValueError, match=match):
            sequence_mask(torch.tensor(lengths), max_length)


# ---------------------------------------------------------------- user sequences


def test_cut_sequences_keeps_every_step_in_order():
    sequences, lengths = synthetic_sequences(5, max_length=11, data_dim=3, seed=0, min_length=1)
    pieces, piece_lengths = cut_sequences(sequences, lengths, 4)
    assert pieces.shape[1:] == (4, 3) and int(piece_lengths.max()) <= 4
    assert int(piece_lengths.sum()) == int(lengths.sum())
    rebuilt = torch.cat([piece[:length] for piece, length in zip(pieces, piece_lengths)])
    original = torch.cat([sequence[:length] for sequence, length in zip(sequences, lengths)])
    torch.testing.assert_close(rebuilt, original)
    assert torch.all(pieces[~sequence_mask(piece_lengths, 4)] == 0)
    with pytest.raises(ValueError, match="max_steps"):
        cut_sequences(sequences, lengths, 0)


def test_nan_padding_carries_the_lengths():
    sequences, lengths = synthetic_sequences(6, max_length=7, data_dim=3, seed=1, min_length=1)
    padded = nan_padded(sequences, lengths, 9)
    assert padded.shape == (6, 9, 3)
    torch.testing.assert_close(DMM.nan_padded_lengths(padded), lengths)
    with pytest.raises(ValueError, match="max_steps"):
        nan_padded(sequences, lengths, 2)
    padded[0, 0] = float("nan")  # a NaN step before real ones is not padding
    with pytest.raises(ValueError, match="NaN steps before real ones"):
        DMM.nan_padded_lengths(padded)


def test_load_sequences_round_trip(tmp_path):
    sequences, lengths = synthetic_sequences(6, max_length=7, data_dim=3, seed=1)
    np.savez(tmp_path / "songs.npz", sequences=sequences.numpy().astype(bool), lengths=lengths.numpy())
    loaded, loaded_lengths = load_sequences(tmp_path / "songs.npz")
    assert loaded.dtype == torch.float32 and loaded_lengths.dtype == torch.int64
    assert torch.equal(loaded, sequences) and torch.equal(loaded_lengths, lengths)

    rng = np.random.default_rng(0)
    probs = rng.random((2, 4, 3))
    probs[0, 2:] = np.nan  # garbage in the padding: ignored and zeroed
    probs[1, 3:] = 7.0
    np.savez(tmp_path / "probs.npz", sequences=probs, lengths=np.array([2.0, 3.0]))
    loaded, loaded_lengths = load_sequences(str(tmp_path / "probs.npz"), dtype=torch.float64)
    assert loaded_lengths.tolist() == [2, 3] and loaded.dtype == torch.float64
    assert torch.equal(loaded[0, :2], torch.from_numpy(probs[0, :2])) and bool((loaded[0, 2:] == 0).all())
    assert torch.equal(loaded[1, :3], torch.from_numpy(probs[1, :3])) and bool((loaded[1, 3:] == 0).all())


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"sequences": np.zeros((2, 3, 4))}, "no array named 'lengths'"),
        ({"lengths": np.ones(2)}, "no array named 'sequences'"),
        ({"sequences": np.zeros((2, 3)), "lengths": np.ones(2, dtype=int)}, r"must be \(N, T, D\)"),
        ({"sequences": np.zeros((2, 3, 4)), "lengths": np.ones(3, dtype=int)}, r"must be \(2,\)"),
        ({"sequences": np.zeros((2, 3, 4)), "lengths": np.array([1, 0])}, r"between 1 and T=3.*lengths\[1\] = 0"),
        ({"sequences": np.zeros((2, 3, 4)), "lengths": np.array([4, 1])}, r"lengths\[0\] = 4"),
        ({"sequences": np.zeros((2, 3, 4)), "lengths": np.array([1.5, 1.0])}, r"whole numbers.*lengths\[0\]"),
        ({"sequences": np.zeros((2, 3, 4), dtype=complex), "lengths": np.ones(2, dtype=int)}, "complex"),
        ({"sequences": np.zeros((0, 3, 4)), "lengths": np.ones(0, dtype=int)}, "empty"),
        (
            {"sequences": np.where(np.arange(3)[None, :, None] == 1, np.nan, np.zeros((2, 3, 4))),
             "lengths": np.array([3, 1])},
            "non-finite.*sequence 0, step 1, feature 0",
        ),
    ],
)
def test_load_sequences_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_sequences(tmp_path / "bad.npz")


def test_load_sequences_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sequences(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="directory"):
        load_sequences(tmp_path)
    np.save(tmp_path / "single.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="single array"):
        load_sequences(tmp_path / "single.npy")
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="cannot read"):
        load_sequences(tmp_path / "junk.npz")
    np.savez(tmp_path / "ok.npz", sequences=np.zeros((1, 2, 3)), lengths=np.array([2]))
    with pytest.raises(ValueError, match="dtype"):
        load_sequences(tmp_path / "ok.npz", dtype=torch.int64)


# ---------------------------------------------------------------- Bach chorales


def test_load_chorales_without_music21_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "music21", None)  # import music21 now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "pyro-iterative\[music\]"'):
        load_chorales(cache_dir=tmp_path, progress=False, limit=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"time_quantum": 0}, "time_quantum"),
        ({"time_quantum": "eighth"}, "time_quantum"),
        ({"seed": -1}, "seed"),
        ({"limit": 0}, "limit"),
        ({"splits": (0.5, 0.5)}, "three fractions"),
        ({"splits": (0.5, 0.3, 0.3)}, "sum to 1"),
        ({"splits": (0.0, 0.5, 0.5)}, "no training chorale"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_load_chorales_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_chorales(cache_dir=tmp_path, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())  # refused before parsing or caching anything


LIMIT = 5


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """The first LIMIT chorales, parsed once into a temporary cache: (split, cache directory)."""
    pytest.importorskip("music21")
    cache = tmp_path_factory.mktemp("chorale-cache")
    split = load_chorales(cache_dir=cache, progress=False, limit=LIMIT, splits=(0.6, 0.2, 0.2), seed=0)
    return split, cache


def _rolls_by_name(split):
    """{name: the chorale's roll cut to its length} over the three sets of a split."""
    found = {}
    for part in ("train", "valid", "test"):
        rolls, lengths, index = (getattr(split, part + suffix) for suffix in ("", "_lengths", "_index"))
        for roll, length, i in zip(rolls, lengths, index):
            found[split.names[int(i)]] = roll[: int(length)]
    return found


def test_chorales_are_binary_88_key_rolls_zero_padded(parsed):
    split, _ = parsed
    assert len(split.names) == LIMIT and split.skipped == () and split.time_quantum == 1.0
    assert all(name.startswith("bwv") for name in split.names)
    for part in ("train", "valid", "test"):
        rolls, lengths = getattr(split, part), getattr(split, part + "_lengths")
        assert rolls.dim() == 3 and rolls.shape[-1] == 88 and rolls.dtype == torch.float32
        assert lengths.dtype == torch.int64 and lengths.shape == (len(rolls),) and len(rolls) >= 1
        assert rolls.shape[1] == int(lengths.max())  # padded to the longest chorale of the set
        assert bool(((rolls == 0) | (rolls == 1)).all())
        mask = sequence_mask(lengths, rolls.shape[1])
        assert bool((rolls[~mask] == 0).all())  # zero beyond each length
        keys_on = rolls.sum(-1)[mask]
        assert int(keys_on.max()) <= 4  # four voices (unisons give fewer keys)
        assert float((keys_on >= 3).float().mean()) > 0.8  # mostly full chords
        last = rolls[torch.arange(len(rolls)), lengths - 1]
        assert bool((last.sum(-1) >= 1).all())  # the final chord is the last step: lengths fit the rolls
    used = sum(getattr(split, part).sum((0, 1)) for part in ("train", "valid", "test")).nonzero().flatten()
    assert 12 <= int(used.min()) and int(used.max()) <= 64  # MIDI 33..85: within the chorales' vocal range


def test_chorale_split_is_by_chorale_disjoint_and_seeded(parsed):
    split, cache = parsed
    sizes = [len(split.train_index), len(split.valid_index), len(split.test_index)]
    assert sizes == [3, 1, 1]
    everything = torch.cat([split.train_index, split.valid_index, split.test_index])
    assert sorted(everything.tolist()) == list(range(LIMIT))  # disjoint and complete
    same = load_chorales(cache_dir=cache, progress=False, limit=LIMIT, seed=0)
    for part in ("train", "valid", "test", "train_index", "test_lengths"):
        assert torch.equal(getattr(same, part), getattr(split, part))
    other = load_chorales(cache_dir=cache, progress=False, limit=LIMIT, seed=1)
    assert not torch.equal(other.train_index, split.train_index)
    mine, theirs = _rolls_by_name(split), _rolls_by_name(other)
    assert mine.keys() == theirs.keys() == set(split.names)
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name  # each roll moves with its chorale
    halves = load_chorales(cache_dir=cache, progress=False, limit=LIMIT, splits=(0.5, 0.5, 0.0))
    assert len(halves.test) == 0 and halves.test.shape == (0, 0, 88)


def test_chorale_rolls_sample_the_voices_at_each_step(parsed):
    """Independent check with music21: key k is on at step t exactly when a voice sounds MIDI 21 + k at time t."""
    music21 = pytest.importorskip("music21")
    split, _ = parsed
    name = split.names[0]
    roll = _rolls_by_name(split)[name]
    score = music21.converter.parse(music21.corpus.getWork(f"bach/{name}"), forceSource=True)
    parts = [part for part in score.parts if part.partName in ("Soprano", "Alto", "Tenor", "Bass")]
    voices = [part.flatten().notesAndRests.stream() for part in parts]
    assert len(voices) == 4 and len(roll) > 20
    for t in range(len(roll)):
        expected = set()
        for voice in voices:
            element = voice.getElementAtOrBefore(t)  # the note, chord or rest sounding at time t, if it lasts
            if element is not None and element.offset + element.quarterLength > t:
                expected |= {int(p.midi) - 21 for p in getattr(element, "pitches", ())}
        assert set(roll[t].nonzero().flatten().tolist()) == expected, (name, t)


def test_eighth_note_steps_refine_quarter_note_steps(parsed, tmp_path):
    split, _ = parsed
    quarters = _rolls_by_name(split)
    eighths = load_chorales(cache_dir=tmp_path, progress=False, limit=2, time_quantum=0.5, splits=(1, 0, 0))
    assert eighths.time_quantum == 0.5
    off_beat_changes = 0
    for name, roll in _rolls_by_name(eighths).items():
        assert len(roll) in (2 * len(quarters[name]) - 1, 2 * len(quarters[name]))
        assert torch.equal(roll[::2], quarters[name])  # the same instants, sampled twice as often
        off_beat_changes += int((roll[1::2] != roll[::2][: len(roll[1::2])]).any(-1).sum())
    assert off_beat_changes > 10  # the steps between beats add the passing eighth notes


def test_second_call_reads_the_cache_without_parsing(parsed, monkeypatch):
    split, cache = parsed
    parsed_files = []
    parse = chorales._parse_chorale

    def counting_parse(path, time_quantum):
        parsed_files.append(path.name)
        return parse(path, time_quantum)

    monkeypatch.setattr(chorales, "_parse_chorale", counting_parse)
    cached = load_chorales(cache_dir=cache, progress=False, limit=LIMIT, seed=0)
    assert parsed_files == []
    assert cached.names == split.names and torch.equal(cached.train, split.train)
    assert torch.equal(cached.test_lengths, split.test_lengths)
    load_chorales(cache_dir=cache, progress=False, limit=1, splits=(1, 0, 0))  # other settings: another cache file
    assert parsed_files == [split.names[0]]


def test_cache_is_written_atomically(parsed, tmp_path, monkeypatch):
    _, cache = parsed
    files = sorted(path.name for path in cache.iterdir())
    assert all(name.startswith("chorales-") and name.endswith(".npz") for name in files)
    assert not any(name.endswith(".tmp") for name in files)

    real_savez = np.savez_compressed

    def interrupted(stream, **arrays):
        real_savez(stream, **arrays)  # the temporary file is complete ...
        raise KeyboardInterrupt  # ... but the write is interrupted before the rename

    monkeypatch.setattr(np, "savez_compressed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_chorales(cache_dir=tmp_path / "new", progress=False, limit=1)
    assert list((tmp_path / "new").iterdir()) == []  # neither a cache file nor a temporary file is left
    monkeypatch.setattr(np, "savez_compressed", real_savez)
    split = load_chorales(cache_dir=tmp_path / "new", progress=False, limit=1, splits=(1, 0, 0))
    assert len(split.names) == 1 and [p.suffix for p in (tmp_path / "new").iterdir()] == [".npz"]


def test_damaged_cache_is_parsed_again(parsed, tmp_path):
    split, _ = parsed
    first = load_chorales(cache_dir=tmp_path, progress=False, limit=1, splits=(1, 0, 0))
    [cache_file] = tmp_path.iterdir()
    cache_file.write_bytes(b"damaged")
    again = load_chorales(cache_dir=tmp_path, progress=False, limit=1, splits=(1, 0, 0))
    assert torch.equal(again.train, first.train) and cache_file.stat().st_size > 100  # rewritten


def test_non_chorales_and_unparsable_files_are_skipped_and_counted(parsed, tmp_path, monkeypatch):
    music21 = pytest.importorskip("music21")
    split, _ = parsed
    chorale = Path(music21.corpus.getWork(f"bach/{split.names[0]}"))
    prelude = Path(music21.corpus.getWork("bach/bwv846"))  # the C major prelude of the Well-Tempered Clavier
    broken = tmp_path / "broken.mxl"
    broken.write_bytes(b"not a score")
    monkeypatch.setattr(chorales, "_chorale_files", lambda _: [broken, chorale, prelude])
    with pytest.warns(UserWarning, match="1 Bach work"):
        result = load_chorales(cache_dir=tmp_path / "cache", progress=False, splits=(1, 0, 0))
    assert result.names == (split.names[0],)
    assert len(result.skipped) == 2
    assert result.skipped[0].startswith("broken.mxl (cannot be parsed")
    assert result.skipped[1] == "bwv846.mxl (not a four-voice chorale)"
    assert torch.equal(result.train[0, : int(result.train_lengths[0])], _rolls_by_name(split)[split.names[0]])
    with pytest.raises(ValueError, match="no four-voice chorale"):
        monkeypatch.setattr(chorales, "_chorale_files", lambda _: [prelude])
        load_chorales(cache_dir=tmp_path / "other", progress=False)


def test_chorale_files_are_the_scores_of_the_bach_corpus():
    music21 = pytest.importorskip("music21")
    files = chorales._chorale_files(music21)
    names = [path.name for path in files]
    assert names == sorted(names) and len(names) > 300
    assert all(path.suffix in (".mxl", ".xml", ".krn") for path in files)  # no .rntxt analyses
    stems = [name.rsplit(".", 1)[0] for name in names]
    assert len(stems) == len(set(stems))  # one file per work
    assert "bwv277.mxl" in names and "bwv277.krn" not in names
