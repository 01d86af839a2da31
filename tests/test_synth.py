"""Synthetic library generator: determinism, realistic shapes, seeded growth and query sets."""
from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from fastspec import synth
from fastspec.errors import FastspecError, ParameterError
from fastspec.spectra import Spectra, _segment_ids

MASS = {"C": 12.0, "H": 1.00782503207, "N": 14.0030740048, "O": 15.99491461956, "P": 30.97376163, "S": 31.97207100}
HILL = re.compile(r"^C\d*(H\d*)?(N\d*)?(O\d*)?(P\d*)?(S\d*)?$")


@pytest.fixture(scope="module")
def lib() -> Spectra:
    return synth.generate(20_000, seed=7)


def _md(s: Spectra, col: str) -> np.ndarray:
    return np.asarray(s.metadata.column(col).to_pylist(), dtype=object)


def _formula_mass(f: str) -> float:
    return sum(MASS[e] * (int(n) if n else 1) for e, n in re.findall(r"([A-Z][a-z]?)(\d*)", f))


def _assert_sorted(s: Spectra) -> None:
    seg = _segment_ids(s.offsets)
    same = seg[1:] == seg[:-1]
    assert np.all(np.diff(s.mz)[same] > 0)  # sorted, and no m/z twice in a spectrum (libraries as read have none)


def test_deterministic_and_seed_dependent():
    a = synth.generate(3000, seed=5)
    b = synth.generate(3000, seed=5)
    c = synth.generate(3000, seed=6)
    for x in ("offsets", "mz", "intensity", "precursor_mz", "charge"):
        np.testing.assert_array_equal(getattr(a, x), getattr(b, x))
    assert a.metadata.equals(b.metadata)
    assert not (a.mz.shape == c.mz.shape and np.array_equal(a.mz, c.mz))
    # other compounds, other keys: two seeds' molecule 0 shared its InChIKey (an audit)
    assert not set(_md(a, "inchikey14")) & set(_md(c, "inchikey14"))


def test_threads_do_not_change_output():
    n = synth.CHUNK + 500  # two chunks
    a = synth.generate(n, seed=1, threads=1)
    b = synth.generate(n, seed=1, threads=2)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.mz, b.mz)
    np.testing.assert_array_equal(a.intensity, b.intensity)
    assert a.metadata.equals(b.metadata)


def test_layout_and_peaks(lib):
    assert len(lib) == 20_000
    assert lib.offsets.dtype == np.int64 and lib.mz.dtype == np.float64 and lib.intensity.dtype == np.float32
    npk = lib.n_peaks
    assert npk.min() >= 1
    assert 10 <= np.median(npk) <= 30
    assert np.percentile(npk, 99) > 3 * np.median(npk)  # heavy tail
    _assert_sorted(lib)
    seg = _segment_ids(lib.offsets)
    assert np.all(lib.mz <= lib.precursor_mz[seg] * (1 + 20e-6))  # fragments (and the precursor ion) below precursor
    frac = lib.mz / lib.precursor_mz[seg]
    assert 0.3 < np.median(frac) < 0.7
    # one base peak of 999 per spectrum, most peaks small
    base = np.maximum.reduceat(lib.intensity, lib.offsets[:-1])
    np.testing.assert_allclose(base, 999.0, rtol=1e-6)
    assert np.median(lib.intensity / base[seg]) < 0.2
    assert np.all(lib.intensity > 0)


def test_metadata(lib):
    md = lib.metadata
    for col in ("id", "name", "formula", "smiles", "inchikey", "inchikey14", "adduct", "ion_mode", "charge",
                "precursor_mz", "instrument_type", "collision_energy", "molecule"):
        assert col in md.column_names
        assert md.column(col).null_count == 0
    ids = _md(lib, "id")
    assert len(set(ids)) == len(lib)
    mol = np.asarray(md.column("molecule"))
    n_mol = np.unique(mol).shape[0]
    assert n_mol == 20_000 // 40  # ~40 spectra per molecule
    ik14 = _md(lib, "inchikey14")
    ik = _md(lib, "inchikey")
    pairs = set(zip(mol.tolist(), ik14.tolist()))
    assert len(pairs) == n_mol and len({p[1] for p in pairs}) == n_mol  # one key per molecule, unique
    assert all(re.fullmatch(r"[A-Z]{14}-[A-Z]{8}SA-N", k) for k in set(ik))
    assert all(k.startswith(k14) for k, k14 in zip(ik[:200], ik14[:200]))
    formulas = _md(lib, "formula")
    assert all(HILL.match(f) for f in set(formulas))
    # both polarities, charge consistent with ion mode
    mode = _md(lib, "ion_mode")
    assert {"positive", "negative"} <= set(mode)
    assert np.all((lib.charge > 0) == (mode == "positive"))
    assert np.all(lib.polarity == lib.charge)
    adducts = set(_md(lib, "adduct"))
    assert {"[M+H]+", "[M+Na]+", "[M-H]-", "[M+NH4]+"} <= adducts
    assert 150 < np.median(lib.precursor_mz) < 600
    np.testing.assert_array_equal(np.asarray(md.column("precursor_mz")), lib.precursor_mz)


def test_shapes_like_a_real_library(lib):
    """The shapes bench/synth_realism.py compares with MassBank, loosely: sparse and precursor-dominated
    spectra exist, a few peaks hold most of the intensity, peak counts grow with the precursor mass,
    molecules share neutral losses and fragment ions, spectra per molecule vary widely, few peaks sit
    below m/z 50. (MassBank: 20% of spectra with <= 3 peaks, the precursor the base peak in 21%, 11% with
    an H2O loss, m/z 65.04 in 31% of molecules, CV of spectra per molecule 1.26, 1.9% of peaks below 50.)"""
    seg = _segment_ids(lib.offsets)
    n = lib.n_peaks
    pmz = lib.precursor_mz
    assert 0.05 < np.mean(n <= 3) < 0.4
    base = np.maximum.reduceat(lib.intensity, lib.offsets[:-1])
    at_prec = np.abs(lib.mz - pmz[seg]) <= 0.01
    prec_base = np.bincount(seg[at_prec & (lib.intensity >= base[seg])], minlength=len(lib)) > 0
    assert 0.05 < prec_base.mean() < 0.5
    assert np.median(n[pmz > 600]) > 1.5 * np.median(n[pmz < 250])
    h2o = np.bincount(seg[np.abs(lib.mz - (pmz[seg] - 18.010565)) <= 0.01], minlength=len(lib)) > 0
    assert 0.03 < h2o.mean() < 0.3
    mol = np.asarray(lib.metadata.column("molecule"))
    at_91 = np.abs(lib.mz - 91.0542) <= 0.01
    tropylium = np.unique(mol[seg[at_91]]).shape[0] / np.unique(mol).shape[0]
    assert tropylium > 0.1
    # common ions are protonated ones: not in [M-H]- or [M+Na]+ spectra (they would sit 2 / 22 Da off)
    add = _md(lib, "adduct")
    with_91 = np.bincount(seg[at_91], minlength=len(lib)) > 0
    assert with_91[add == "[M+H]+"].mean() > 5 * max(with_91[add == "[M+Na]+"].mean(), with_91[add == "[M-H]-"].mean())
    per_mol = np.bincount(mol)
    assert per_mol.std() / per_mol.mean() > 0.9
    assert np.mean(lib.mz < 50) < 0.05


def test_a_molecules_spectra_differ_in_conditions(lib):
    """About 40 spectra per molecule at different collision energies and adducts: drawn with replacement,
    66% of spectra shared their (molecule, adduct, instrument, energy) with another (MassBank: 27%);
    repeats draw their energy (then instrument) again, within the levels the instruments have."""
    from collections import Counter

    keys = list(zip(_md(lib, "molecule"), _md(lib, "adduct"), _md(lib, "instrument_type"), _md(lib, "collision_energy")))
    c = Counter(keys)
    shared = sum(v for v in c.values() if v > 1) / len(keys)
    assert shared < 0.55, shared
    inst = Counter(_md(lib, "instrument_type"))
    assert 0.42 < inst["LC-ESI-QFT"] / len(keys) < 0.52  # the mix drawn (50%) moves little


def test_formula_buckets_have_isomers(lib):
    formulas = _md(lib, "formula")
    mol = np.asarray(lib.metadata.column("molecule"))
    per_formula = {}
    for f, m in set(zip(formulas.tolist(), mol.tolist())):
        per_formula[f] = per_formula.get(f, 0) + 1
    sizes = np.array(list(per_formula.values()))
    assert (sizes > 1).any() and sizes.max() >= 3
    assert np.median(sizes) == 1  # heavy-tailed: most formulas have one molecule


def test_precursor_mz_from_formula_and_adduct(lib):
    formulas = _md(lib, "formula")
    adducts = _md(lib, "adduct")
    for i in np.flatnonzero(adducts == "[M+H]+")[:50]:
        assert lib.precursor_mz[i] == pytest.approx(_formula_mass(formulas[i]) + 1.007276467, abs=1e-6)
    for i in np.flatnonzero(adducts == "[M-H]-")[:50]:
        assert lib.precursor_mz[i] == pytest.approx(_formula_mass(formulas[i]) - 1.007276467, abs=1e-6)
    for i in np.flatnonzero(adducts == "[M+Na]+")[:50]:
        assert lib.precursor_mz[i] == pytest.approx(_formula_mass(formulas[i]) + 22.989218, abs=1e-5)


def test_adduct_offsets_match_chem():
    adducts = pytest.importorskip("fastspec.chem.adducts")
    f = getattr(adducts, "precursor_mz_from_mass", None)
    if f is None:
        pytest.skip("fastspec.chem.adducts has no precursor_mz_from_mass")
    for name, delta in synth._ADDUCT_DELTA.items():
        mult = synth.ADDUCTS[name][2]
        assert float(f(300.0, name)) == pytest.approx(mult * 300.0 + delta, abs=2e-5)


def test_smiles_are_valid():
    Chem = pytest.importorskip("rdkit.Chem")
    s = synth.generate(2000, seed=3)
    smiles = set(_md(s, "smiles"))
    assert all(Chem.MolFromSmiles(x) is not None for x in list(smiles)[:50])


def test_same_molecule_spectra_share_fragments(lib):
    mol = np.asarray(lib.metadata.column("molecule"))
    add = _md(lib, "adduct")
    shared_same, shared_other = [], []
    for i in range(0, 2000, 50):
        j = next((j for j in range(i + 1, len(lib)) if mol[j] == mol[i] and add[j] == add[i]), None)
        o = int(np.flatnonzero(mol != mol[i])[i % 97])
        for other, bucket in ((j, shared_same), (o, shared_other)):
            if other is None:
                continue
            a, b = lib[i].mz, lib[int(other)].mz
            d = np.abs(a[:, None] - b[None, :]).min(axis=1)
            bucket.append(np.mean(d < 0.01))
    assert np.mean(shared_same) > 0.3 > np.mean(shared_other)


def test_polarity_filter():
    s = synth.generate(2000, seed=2, polarity="negative")
    assert np.all(s.charge == -1)
    assert set(_md(s, "ion_mode")) == {"negative"}


@pytest.mark.parametrize("kwargs", [dict(n_spectra=0), dict(n_spectra=10, n_molecules=11), dict(n_spectra=10, polarity="x"),
                                    dict(n_spectra=2.5)])
def test_bad_arguments(kwargs):
    with pytest.raises(ParameterError):
        synth.generate(**kwargs)


def test_grow_from_massbank(massbank_parquet):
    s = synth.generate(3000, seed=4, seed_library=massbank_parquet)
    s2 = synth.generate(3000, seed=4, seed_library=massbank_parquet)
    np.testing.assert_array_equal(s.mz, s2.mz)
    assert len(s) == 3000 and len(set(s.ids)) == 3000
    assert all(i.startswith("SYN") for i in s.ids[:10])
    from fastspec.io import read

    src = read(str(massbank_parquet))
    rows = np.asarray(s.metadata.column("source_row"))
    assert rows.min() >= 0 and rows.max() < len(src) and np.all(np.diff(rows) >= 0)
    assert _md(s, "source_id")[0] == src.ids[rows[0]]
    np.testing.assert_array_equal(_md(s, "inchikey14"), np.asarray(src.metadata.column("inchikey14").to_pylist(), object)[rows])
    _assert_sorted(s)
    assert s.n_peaks.min() >= 1
    # peaks are the source's within a few ppm (most of them; some dropped, some added)
    close = []
    for i in range(0, 3000, 100):
        a, b = s[i].mz, src[int(rows[i])].mz
        d = np.abs(a[:, None] - b[None, :]).min(axis=1) / a * 1e6
        close.append(np.mean(d < 15))
    assert np.mean(close) > 0.8
    grown = synth.generate(1010, seed=0, seed_library=src.take(np.arange(500)))
    assert len(grown) == 1010
    counts = np.bincount(np.asarray(grown.metadata.column("source_row")), minlength=500)
    assert counts.min() >= 2 and counts.max() <= 3  # every source used about equally


def test_grow_polarity_and_errors(massbank_parquet):
    s = synth.generate(500, seed=1, seed_library=massbank_parquet, polarity="negative")
    assert set(_md(s, "ion_mode")) == {"negative"}
    # source_row / source_id name rows of the seed library as given, not of its filtered copy (other
    # polarity and empty spectra dropped): they pointed at unrelated spectra
    from fastspec.io import read

    src = read(str(massbank_parquet))
    rows = np.asarray(s.metadata.column("source_row"))
    assert (src.polarity[rows] == -1).all() and list(_md(s, "source_id")) == [src.ids[r] for r in rows]
    holed = Spectra.concat([Spectra.from_arrays([[]], [[]], precursor_mz=[100.0]), src.take(np.arange(50))])
    g = synth.generate(60, seed=2, seed_library=holed)
    r = np.asarray(g.metadata.column("source_row"))
    assert r.min() >= 1 and list(_md(g, "source_id")) == [holed.ids[i] for i in r]
    with pytest.raises(ParameterError):
        synth.generate(10, n_molecules=3, seed_library=massbank_parquet)
    with pytest.raises(FileNotFoundError):
        synth.generate(10, seed_library="/nonexistent/lib.parquet")
    empty = Spectra.from_arrays([[]], [[]], precursor_mz=[100.0])
    with pytest.raises(FastspecError):
        synth.generate(10, seed_library=empty)


def test_grow_from_another_labs_file(tmp_path):
    """A seed file as other labs export it (an audit): MS1 / MSn records are left out (they were grown into
    'MS2' copies an index then took), an InChI-only structure keeps its InChI (GNPS: SMILES=N/A; the formula
    was lost), the seed report counts what was read, rejected, left out and what its copies lack, and
    queries from a grown library name the seed spectrum every copy of which is an answer."""
    rec = ("BEGIN IONS\nTITLE={t}\nPEPMASS={p}\nCHARGE=1+\nMSLEVEL={lv}\nSMILES=N/A\n"
           "INCHI=InChI=1S/C8H10N4O2/c1-10-4-9-6-5(10)7(13)12(3)8(14)11(6)2/h4H,1-3H3\n"
           "110.0713 20\n138.0662 100\n163.0600 15\nEND IONS\n")
    text = "".join(rec.format(t=f"s{i}", p=195.0877 + i, lv=lv) for i, lv in enumerate([2, 1, 2, 3, 2]))
    text += "BEGIN IONS\nTITLE=bad\nPEPMASS=200\n110.0 abc\nEND IONS\n"
    seed = tmp_path / "gnps.mgf"
    seed.write_text(text)
    report: dict = {}
    g = synth.generate(30, seed=1, seed_library=seed, seed_report=report)
    assert sorted(set(_md(g, "source_id"))) == ["s0", "s2", "s4"]
    assert all(v.startswith("InChI=1S/C8H10N4O2") for v in _md(g, "inchi"))
    assert report == {"n_records": 6, "n_rejected": 1, "rejected": {"unparsable peak line": 1},
                      "left_out": {"MS1 spectrum (ms_level 1)": 1, "MSn spectrum (ms_level 3 or more)": 1},
                      "n_used": 3, "no_precursor": 0, "no_formula": 0}
    q, rows = synth.make_queries(g, 10, seed=2)
    assert list(_md(q, "seed_id")) == [_md(g, "source_id")[r] for r in rows]
    assert list(_md(q, "source_id")) == [g.ids[r] for r in rows]
    # a formula that does not parse keeps the InChI (the index takes the formula from it, as for the seed);
    # a SMILES gives one too: counted as having a formula (a review)
    odd = tmp_path / "odd.mgf"
    odd.write_text(rec.format(t="a", p=195.0877, lv=2).replace("SMILES=N/A\n", "FORMULA=C8H10N4O2 (caffeine)\n")
                   + rec.format(t="b", p=195.0877, lv=2).replace("SMILES=N/A", "SMILES=Cn1cnc2c1c(=O)n(C)c(=O)n2C")
                   .replace("INCHI=", "X_INCHI="))
    report = {}
    g = synth.generate(4, seed=1, seed_library=odd, seed_report=report)
    assert report["no_formula"] == 0
    assert [v is not None for v in _md(g, "inchi")] == [s == "a" for s in _md(g, "source_id")]
    only_ms1 = tmp_path / "ms1.mgf"
    only_ms1.write_text(rec.format(t="x", p=195.0877, lv=1))
    with pytest.raises(FastspecError, match="MS1 spectrum"):
        synth.generate(10, seed_library=only_ms1)


def test_make_queries(lib):
    q, truth = synth.make_queries(lib, 300, seed=9)
    q2, truth2 = synth.make_queries(lib, 300, seed=9)
    np.testing.assert_array_equal(truth, truth2)
    np.testing.assert_array_equal(q.mz, q2.mz)
    assert len(q) == 300 and truth.dtype == np.int64 and len(np.unique(truth)) == 300
    np.testing.assert_array_equal(np.asarray(q.metadata.column("source_row")), truth)
    np.testing.assert_array_equal(_md(q, "inchikey14"), _md(lib, "inchikey14")[truth])
    np.testing.assert_array_equal(_md(q, "source_id"), np.asarray(lib.ids, object)[truth])
    assert all(i.startswith("Q") for i in q.ids)
    ppm = np.abs(q.precursor_mz / lib.precursor_mz[truth] - 1) * 1e6
    assert ppm.max() < 15 and ppm.max() > 0
    _assert_sorted(q)
    assert q.n_peaks.min() >= 1
    # exact copies with noise=0
    q0, t0 = synth.make_queries(lib, 50, seed=9, noise=0)
    ref = lib.take(t0)
    np.testing.assert_array_equal(q0.offsets, ref.offsets)
    np.testing.assert_allclose(q0.mz, ref.mz, atol=6e-6)
    np.testing.assert_array_equal(q0.intensity, ref.intensity)
    # explicit rows
    q3, t3 = synth.make_queries(lib, rows=np.array([5, 1, 5]))
    np.testing.assert_array_equal(t3, [5, 1, 5])
    with pytest.raises(ParameterError):
        synth.make_queries(lib, len(lib) + 1)
    with pytest.raises(ParameterError):
        synth.make_queries(lib, 5, noise=-1)
    # rows given are the answers returned: whole rows of this library (-1, len and 1.7 were a bare
    # ValueError, an IndexError and row 1)
    for rows in ([-1], [len(lib)], [1.7], [[1, 2]]):
        with pytest.raises(ParameterError, match="rows"):
            synth.make_queries(lib, rows=np.array(rows))
    assert len(synth.make_queries(lib, rows=np.zeros(0, np.int64))[0]) == 0
    # whole-number floats (a pandas column with missing values) are rows, as in Library's arguments
    np.testing.assert_array_equal(synth.make_queries(lib, rows=np.array([5.0, 1.0]))[1], [5, 1])
    with pytest.raises(ParameterError, match="rows"):
        synth.make_queries(lib, rows=np.array([True, False]))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.floats(50, 900, allow_nan=False), min_size=0, max_size=12), min_size=1, max_size=6),
       st.integers(0, 2**32 - 1), st.floats(0, 3))
def test_perturb_properties(peak_lists, seed, noise):
    mzs = [sorted(set(round(m, 3) for m in p)) for p in peak_lists]
    ints = [np.linspace(1, 10, len(m)) for m in mzs]
    s = Spectra.from_arrays(mzs, ints, precursor_mz=[1000.0] * len(mzs))
    out = synth.perturb(s, seed, **synth._noise_params(noise))
    assert len(out) == len(s)
    _assert_sorted(out)
    nonempty = s.n_peaks > 0
    assert np.all(out.n_peaks[nonempty] >= 1)  # the base peak survives
    assert np.all(out.mz < 1000.0) and np.all(out.intensity > 0)
    again = synth.perturb(s, seed, **synth._noise_params(noise))
    np.testing.assert_array_equal(out.mz, again.mz)


def test_cli_synth(tmp_path):
    from fastspec.cli import main

    out = tmp_path / "lib.parquet"
    qout = tmp_path / "q.parquet"
    r = CliRunner().invoke(main, ["synth", "-n", "2000", "--seed", "3", "-o", str(out), "--queries", "20", "--queries-output", str(qout), "--quiet"])
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(main, ["synth", "-n", "2000", "--seed", "3", "-o", str(tmp_path / "again.parquet"), "-q"])
    assert r2.exit_code == 0, r2.output
    assert out.read_bytes() == (tmp_path / "again.parquet").read_bytes()
    import pyarrow.parquet as pq

    t = pq.read_table(out)
    assert t.num_rows == 2000 and {"mz", "intensity", "precursor_mz", "inchikey14"} <= set(t.column_names)
    assert pq.read_table(qout).num_rows == 20
    bad = CliRunner().invoke(main, ["synth", "-n", "10", "-o", str(tmp_path / "x.txt")])
    assert bad.exit_code != 0 and "Error" in bad.output and "Traceback" not in bad.output
    bad = CliRunner().invoke(main, ["synth", "-n", "10", "-o", str(out), "--queries", "3"])
    assert bad.exit_code != 0 and "queries" in bad.output
    # --noise perturbs queries: without them it would be silently ignored
    bad = CliRunner().invoke(main, ["synth", "-n", "10", "-o", str(tmp_path / "n.parquet"), "--noise", "0"])
    assert bad.exit_code == 1 and "--noise applies to the queries" in bad.output
    # more queries than spectra, or a size beyond this machine's memory: refused before anything is made
    for args, why in ((["-n", "100", "--queries", "500"], "cannot draw 500 queries"),
                      (["-n", str(10**12), "--queries", "5"], "GiB of memory")):
        target = tmp_path / "never.parquet"
        bad = CliRunner().invoke(main, ["synth", *args, "-o", str(target), "--queries-output", str(tmp_path / "nq.parquet")])
        assert bad.exit_code == 1 and why in bad.output and "Traceback" not in bad.output and not target.exists()


def test_formula_masses_do_not_drift_with_size():
    """Light formulas run out first; the pool re-weighting keeps the mass distribution nearly size-free."""
    el = np.array([MASS[e] for e in "CHNOPS"])
    med = []
    for n_f in (500, 15_000):
        counts = synth._unique_formulas(np.random.default_rng(1), n_f)
        assert counts.shape == (n_f, 6)
        assert np.unique(synth._formula_code(counts)).shape[0] == n_f  # distinct
        med.append(np.median(counts @ el))
    assert 250 < med[0] < 360 and abs(med[1] / med[0] - 1) < 0.15


def test_progress_bar(capsys):
    a = synth.generate(2000, seed=1, progress=True)
    err = capsys.readouterr().err
    assert "synthesizing" in err
    b = synth.generate(2000, seed=1)
    np.testing.assert_array_equal(a.mz, b.mz)


def test_cli_out_of_memory_is_one_line(tmp_path, monkeypatch):
    """A MemoryError (numpy's "Unable to allocate ...") is one line and exit 1, not a traceback."""
    from fastspec.cli import main

    def too_big(*a, **k):
        raise MemoryError("Unable to allocate 93.1 GiB for an array with shape (12500000000,) and data type int64")

    monkeypatch.setattr(synth, "generate", too_big)
    r = CliRunner().invoke(main, ["synth", "-n", "1000", "-o", str(tmp_path / "x.parquet")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1] == "Error: out of memory: Unable to allocate 93.1 GiB; try a smaller input or size"


def test_a_library_that_cannot_fit_is_refused(monkeypatch):
    """Generation checks the machine's memory before allocating (grown mode builds its plan in Python)."""
    import fastspec._sysmem as sysmem

    monkeypatch.setattr(sysmem, "physical_memory", lambda: 10_000)
    with pytest.raises(ParameterError, match="spectra need about .* of memory to generate"):
        synth.generate(1000, seed=1)
    monkeypatch.setattr(sysmem, "physical_memory", lambda: None)
    assert len(synth.generate(50, seed=1)) == 50
