"""Packed-bit Tanimoto kernels and Morgan fingerprints against naive / RDKit references."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastspec.errors import ParameterError
from fastspec.kernels.tanimoto import (
    max_tanimoto_csr,
    pack_bits,
    popcounts,
    tanimoto_matrix,
    tanimoto_one_vs_many,
    tanimoto_pairs,
    unpack_bits,
)


def naive(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return 0.0 if union == 0 else inter / union


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 200), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_matrix_matches_naive(na, nb, nbits, seed, density):
    rng = np.random.default_rng(seed)
    a = rng.random((na, nbits)) < density
    b = rng.random((nb, nbits)) < density
    got = tanimoto_matrix(pack_bits(a), pack_bits(b))
    ref = np.array([[naive(x, y) for y in b] for x in a])
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_pack_roundtrip_and_popcount():
    rng = np.random.default_rng(1)
    bits = rng.random((7, 130)) < 0.3
    p = pack_bits(bits)
    assert p.dtype == np.uint64 and p.shape == (7, 3)
    np.testing.assert_array_equal(unpack_bits(p, 130), bits.astype(np.uint8))
    np.testing.assert_array_equal(popcounts(p), bits.sum(axis=1))
    # all 64 bits set in a word: popcount edge case
    full = pack_bits(np.ones((1, 64)))
    assert popcounts(full)[0] == 64


def test_pairs_one_vs_many_and_csr():
    rng = np.random.default_rng(2)
    a = rng.random((5, 100)) < 0.2
    b = rng.random((9, 100)) < 0.2
    pa_, pb = pack_bits(a), pack_bits(b)
    full = tanimoto_matrix(pa_, pb)
    ia = np.array([0, 4, 2, 2])
    ib = np.array([8, 0, 3, 3])
    np.testing.assert_allclose(tanimoto_pairs(pa_, ia, pb, ib), full[ia, ib])
    np.testing.assert_allclose(tanimoto_one_vs_many(pa_[3], pb), full[3])
    offsets = np.array([0, 3, 3, 5])
    cand = np.array([1, 5, 7, 0, 8])
    best, arg = max_tanimoto_csr(pa_, np.array([0, 1, 2]), offsets, cand, pb)
    assert best[1] == -1.0 and arg[1] == -1
    for r, (lo, hi) in enumerate([(0, 3), (3, 3), (3, 5)]):
        if hi > lo:
            c = cand[lo:hi]
            assert best[r] == pytest.approx(full[r, c].max())
            assert arg[r] == c[np.argmax(full[r, c])]


def test_empty_fingerprints_are_zero_like_rdkit():
    z = pack_bits(np.zeros((2, 64)))
    assert tanimoto_matrix(z)[0, 1] == 0.0


def test_bad_input():
    with pytest.raises(ParameterError):
        tanimoto_matrix(np.zeros((2, 2), np.int64))
    with pytest.raises(ParameterError):
        tanimoto_matrix(pack_bits(np.ones((1, 64))), pack_bits(np.ones((1, 128))))
    with pytest.raises(ParameterError):
        tanimoto_pairs(pack_bits(np.ones((2, 64))), np.array([5]), None, np.array([0]))


# ---------------------------------------------------------------------- fingerprints
rdkit = pytest.importorskip("rdkit")


def test_morgan_matches_rdkit_tanimoto():
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    from fastspec.fingerprints import compute_fingerprints

    smiles = ["CCO", "COC", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC", "OC(=O)c1ccccc1O"]
    packed, valid = compute_fingerprints(smiles, "morgan:2:2048")
    assert valid.all() and packed.shape == (6, 32)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]
    ref = np.array([[DataStructs.TanimotoSimilarity(x, y) for y in fps] for x in fps])
    np.testing.assert_allclose(tanimoto_matrix(packed), ref, atol=1e-12)


def test_invalid_smiles_and_cache(tmp_path):
    from fastspec.fingerprints import FingerprintSpec, FingerprintTable, fingerprint_molecules

    keys = ["A", "B", "A", "C", None]
    smiles = ["CCO", "not a smiles", "CCO", None, "CC"]
    t = fingerprint_molecules(keys, smiles, "morgan:2:256", cache_dir=tmp_path)
    assert t.keys == ["A", "B", "C"]
    assert t.valid.tolist() == [True, False, False]
    assert not t.packed[1].any()
    np.testing.assert_array_equal(t.rows(["C", "A", None, "Z"]), [2, 0, -1, -1])
    # the cache is reused: new molecules are appended, old ones not recomputed
    t2 = fingerprint_molecules(["D", "A"], ["c1ccccc1", "garbage"], "morgan:2:256", cache_dir=tmp_path)
    assert t2.keys == ["A", "B", "C", "D"]
    np.testing.assert_array_equal(t2.packed[0], t.packed[0])  # "A" kept its cached (valid) fingerprint
    loaded = FingerprintTable.load(tmp_path, "morgan:2:256")
    assert loaded.keys == t2.keys and loaded.valid.tolist() == [True, False, False, True]
    assert FingerprintSpec.parse("morgan") == FingerprintSpec("morgan", 2, 4096)
    with pytest.raises(ParameterError):
        FingerprintSpec.parse("maccs")
    with pytest.raises(ParameterError):
        fingerprint_molecules(["A"], ["CCO"], "morgan:3:256", table=t)
    # no pickle files anywhere
    assert all(p.suffix in (".npy", ".json") for p in tmp_path.iterdir())
    # a molecule whose first record has a broken SMILES is fingerprinted from its next one, also when the
    # cache holds it as invalid
    t3 = fingerprint_molecules(["B", "E", "E"], ["CCN", "broken(", "CCCl"], "morgan:2:256", cache_dir=tmp_path)
    ref = fingerprint_molecules(["x", "y"], ["CCN", "CCCl"], "morgan:2:256")
    assert t3.keys == ["A", "B", "C", "D", "E"] and t3.valid.tolist() == [True, True, False, True, True]
    np.testing.assert_array_equal(t3.packed[[1, 4]], ref.packed)
    np.testing.assert_array_equal(t3.packed[0], t.packed[0])
    assert FingerprintTable.load(tmp_path, "morgan:2:256").valid.tolist() == [True, True, False, True, True]
    # a save interrupted between its files (keys of 5 molecules, bits of 4): a fresh table, not a misaligned one
    np.save(tmp_path / "morgan_r2_b256.bits.npy", t3.packed[:4])
    assert FingerprintTable.load(tmp_path, "morgan:2:256").keys == []
    # never inside a library index: an append's rebuild would delete the cache (the CLI refused it, the API not)
    from fastspec.errors import ParameterError as PE
    from fastspec.library import Library
    from fastspec.spectra import Spectra

    lib = Library.build(Spectra.from_arrays([[50.0, 60.0]], [[1.0, 2.0]], [100.0]), tmp_path / "l.fastspec",
                        faiss=False, progress=False)
    with pytest.raises(PE, match="inside the library index"):
        t3.save(lib.path / "fp")
    assert not (lib.path / "fp").exists()


def test_molecule_keys_from_smiles():
    from fastspec.fingerprints import molecule_keys

    keys, n = molecule_keys([None, "ABCDEFGHIJKLMN", None], ["LFQSCWFLJHTTHZ-UHFFFAOYSA-N", None, None], ["xx", None, "CCO"])
    assert keys == ["LFQSCWFLJHTTHZ", "ABCDEFGHIJKLMN", "LFQSCWFLJHTTHZ"]
    assert n == 1


def test_rdkit_logging_left_as_it_was():
    """Invalid SMILES are not printed, and the caller's RDKit logging is the same afterwards."""
    rdBase = pytest.importorskip("rdkit.rdBase")
    from fastspec.fingerprints import compute_fingerprints, formulas_from_smiles, molecule_keys

    before = rdBase.LogStatus()
    compute_fingerprints(["CCO", "C1CC", "not a smiles"])
    formulas_from_smiles(["C1CC", "CCO"])
    molecule_keys(None, None, ["C1CC", "CCO"])
    assert rdBase.LogStatus() == before
