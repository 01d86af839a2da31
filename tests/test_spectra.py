import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from fastspec.errors import FastspecError
from fastspec.spectra import Spectra, sort_peaks_csr


def _small():
    return Spectra.from_arrays(
        [[300.0, 100.0, 200.0], [50.0], []],
        [[3, 1, 2], [9], []],
        precursor_mz=[400.0, None, 80.0],
        metadata={"id": ["a", "b", "c"], "charge": [1, -2, 0], "ion_mode": ["positive", None, "negative"]},
    )


def test_layout_and_dtypes():
    s = _small()
    assert len(s) == 3
    assert s.offsets.dtype == np.int64 and s.mz.dtype == np.float64 and s.intensity.dtype == np.float32
    assert s.precursor_mz.dtype == np.float64 and s.charge.dtype == np.int8
    np.testing.assert_array_equal(s.offsets, [0, 3, 4, 4])
    np.testing.assert_array_equal(s.mz[:3], [100, 200, 300])  # sorted, intensities follow
    np.testing.assert_array_equal(s.intensity[:3], [1, 2, 3])
    assert np.isnan(s.precursor_mz[1])
    np.testing.assert_array_equal(s.charge, [1, -2, 0])
    np.testing.assert_array_equal(s.polarity, [1, -1, -1])


@pytest.mark.parametrize("rows", [[1], [0, 1, 2], [1, 2], [2, 1], [0, 2], [1, 1], []])
def test_take_runs_equal_arrow_take(rows):
    # a run of rows takes its metadata as an Arrow slice (zero-copy), others as an Arrow take: same table,
    # and the peaks are copies either way (preprocessing may write into them)
    s = _small()
    sub = s.take(np.array(rows, dtype=np.int64))
    assert sub.metadata.to_pylist() == s.metadata.take(pa.array(rows, pa.int64())).to_pylist()
    assert sub.metadata.schema == s.metadata.schema and len(sub) == len(rows)
    if len(sub) and sub.mz.shape[0]:
        sub.mz[:] = -1.0
        assert (s.mz >= 0).all()


def test_indexing_slicing_order():
    s = _small()
    sub = s[[2, 0]]
    assert sub.ids == ["c", "a"]
    np.testing.assert_array_equal(sub.offsets, [0, 0, 3])
    assert s[1:].ids == ["b", "c"]
    assert s[np.array([False, True, False])].ids == ["b"]
    assert s[-1].index == 2 and len(s[0]) == 3
    with pytest.raises(IndexError):
        s[3]
    with pytest.raises(IndexError):
        s[[0, 5]]


def test_views_and_iteration():
    s = _small()
    views = list(s)
    assert [len(v) for v in views] == [3, 1, 0]
    assert views[0].mz.base is not None  # a view, not a copy
    assert views[0].get("id") == "a" and views[0].get("nope", 7) == 7
    assert views[0].peaks.shape == (3, 2)


def test_concat_unifies_metadata():
    a = _small()
    b = Spectra.from_arrays([[10.0]], [[1.0]], metadata={"id": ["z"], "extra": [1.5]})
    c = a + b
    assert len(c) == 4 and c.ids == ["a", "b", "c", "z"]
    np.testing.assert_array_equal(c.offsets, [0, 3, 4, 4, 5])
    assert c.column("extra") == [None, None, None, 1.5]
    # a column typed differently in two files becomes text; the others keep their types (every column
    # became text, precursor_mz and charge included)
    x = Spectra.from_arrays([[10.0]], [[1.0]], metadata={"id": ["x"], "exact_mass": [180.06], "n": [3]})
    y = Spectra.from_arrays([[20.0]], [[1.0]], metadata={"id": ["y"], "exact_mass": ["n/a"], "n": [4]})
    xy = x + y
    assert xy.metadata.schema.field("exact_mass").type == pa.string() and xy.column("exact_mass") == ["180.06", "n/a"]
    assert xy.metadata.schema.field("n").type == pa.int64() and xy.column("n") == [3, 4]


def test_validation():
    # charges beyond int8 are unknown (0), as when read as text (it was an OverflowError, then a clip to 127)
    assert Spectra.from_arrays([[1.0], [2.0]], [[1.0], [1.0]], charge=[300, -2]).charge.tolist() == [0, -2]
    with pytest.raises(FastspecError):
        Spectra(np.array([0, 2]), np.zeros(3), np.zeros(3))
    with pytest.raises(FastspecError):
        Spectra.from_arrays([[1.0, 2.0]], [[1.0]])
    with pytest.raises(FastspecError):
        Spectra(np.array([0, 1]), np.zeros(1), np.zeros(1), metadata=pa.table({"id": ["a", "b"]}))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 2000, allow_nan=False), max_size=12), min_size=1, max_size=8))
def test_sort_peaks_matches_per_spectrum_sort(peaks):
    ints = [list(range(len(p))) for p in peaks]
    s = Spectra.from_arrays(peaks, ints)
    for i, p in enumerate(peaks):
        order = np.argsort(np.asarray(p, dtype=float), kind="stable")
        np.testing.assert_array_equal(s[i].mz, np.asarray(p, dtype=float)[order])
        np.testing.assert_array_equal(s[i].intensity, np.asarray(ints[i], dtype=np.float32)[order])


def test_sort_peaks_counts_fixed():
    off = np.array([0, 2, 4])
    mz, it, n = sort_peaks_csr(off, np.array([2.0, 1.0, 1.0, 2.0]), np.array([1, 2, 3, 4], np.float32))
    assert n == 1 and list(mz) == [1, 2, 1, 2] and list(it) == [2, 1, 3, 4]


def test_matchms_roundtrip():
    pytest.importorskip("matchms")
    s = _small()[[0, 1]]
    ms = s.to_matchms()
    assert ms[0].get("precursor_mz") == 400.0 and ms[1].get("precursor_mz") is None
    back = Spectra.from_matchms(ms)
    np.testing.assert_array_equal(back.mz, s.mz)
    np.testing.assert_array_equal(back.intensity, s.intensity)
    assert back.ids == s.ids


def test_from_matchms_harmonises_keys(tmp_path):
    """matchms' own key names (ionmode, spectrum_id, compound_name) reach the polarity filter, ids and
    hit tables: a negative spectrum exported with CHARGE=1 (as GNPS/MZmine do) stays negative."""
    pytest.importorskip("matchms")
    from matchms.importing import load_from_mgf

    p = tmp_path / "neg.mgf"
    p.write_text("BEGIN IONS\nTITLE=t1\nSPECTRUM_ID=S1\nCOMPOUND_NAME=Diuron\nIONMODE=negative\nCHARGE=1\n"
                 "PEPMASS=231.0\n100.0 10\n150.0 20\nEND IONS\n")
    ms = list(load_from_mgf(str(p)))  # without matchms' default filters
    s = Spectra.from_matchms(ms)
    assert s.ids == ["S1"] and s.column("name") == ["Diuron"] and s.polarity.tolist() == [-1]
    assert "compound_name" not in s.metadata.column_names
    back = s.to_matchms()[0]
    assert back.get("spectrum_id") == "S1" and back.get("compound_name") == "Diuron" and back.get("ionmode") == "negative"
    assert Spectra.from_matchms([back]).ids == ["S1"]


def test_from_matchms_unharmonised_and_missing_markers(tmp_path):
    """matchms without its metadata harmonisation keeps PEPMASS as (m/z, intensity) and CHARGE as a list:
    read as the MGF reader reads them; "N/A", "null", "None" in metadata are missing as in text files (an
    audit: instrument "N/A" made same_instrument drop every hit, silently)."""
    pytest.importorskip("matchms")
    from matchms import Spectrum
    from matchms.importing import load_from_mgf

    p = tmp_path / "q.mgf"
    p.write_text("BEGIN IONS\nTITLE=q1\nPEPMASS=195.0877 1200\nCHARGE=1+\nIONMODE=Positive\n"
                 "SOURCE_INSTRUMENT=N/A\n110.0713 20\n138.0662 100\nEND IONS\n")
    raw = Spectra.from_matchms(load_from_mgf(str(p), metadata_harmonization=False))
    harmonised = Spectra.from_matchms(load_from_mgf(str(p)))
    for s in (raw, harmonised):
        assert s.precursor_mz.tolist() == [195.0877] and s.charge.tolist() == [1] and s.polarity.tolist() == [1]
        assert s.column("instrument_type") == [None]
    assert raw.column("precursor_intensity") == [1200]
    md = {"adduct": "N/A", "compound_name": "null", "formula": "None", "instrument_type": " n/a ",
          "precursor_mz": 300.0}
    s = Spectra.from_matchms([Spectrum(mz=np.array([100.0]), intensities=np.array([1.0]), metadata=md,
                                       metadata_harmonization=False)])
    assert [s.column(k)[0] for k in ("adduct", "name", "formula", "instrument_type")] == [None] * 4


def test_from_matchms_keys_as_the_readers_give_them(massbank_msp, tmp_path):
    """An MSP loaded by matchms and brought in has the metadata columns fastspec.read gives the same file
    (matchms renames ExactMass / MW to parent_mass / nominal_mass, keeps Synon, adds num_peaks); and a
    generator of matchms spectra (what load_from_msp returns) builds and searches a library as its list."""
    pytest.importorskip("matchms")
    from matchms.importing import load_from_msp

    from fastspec import read
    from fastspec.library import Library

    ours = read(str(massbank_msp))
    theirs = Spectra.from_matchms(load_from_msp(str(massbank_msp)))
    assert set(theirs.metadata.column_names) == set(ours.metadata.column_names)
    assert [float(v) if v is not None else None for v in theirs.column("exact_mass")] == \
        [float(v) if v is not None else None for v in ours.column("exact_mass")]
    # (the readers keep every Synon line as a list; matchms keeps one)
    assert all(t is None or t in o for t, o in zip(theirs.column("synonyms"), ours.column("synonyms")))
    lib = Library.build(load_from_msp(str(massbank_msp)), tmp_path / "g.fastspec", faiss=False)
    assert len(lib) == len(Library.build(list(load_from_msp(str(massbank_msp))), tmp_path / "l.fastspec", faiss=False))
    hits = lib.search(load_from_msp(str(massbank_msp)), k=1, mode="identity")
    assert len(hits) == len(ours)


def test_indexing_and_from_arrays_mistakes():
    s = Spectra.from_arrays([[100.0], [200.0]], [[1.0], [1.0]])
    for key in (1.9, "abc", [0.5]):
        with pytest.raises(IndexError, match="integers"):
            s[key]
    pairs = np.array([[100.0, 1.0], [101.0, 2.0]])
    with pytest.raises(FastspecError, match="1-D"):
        Spectra.from_arrays([pairs], [pairs[:, 1]])
    # plain ValueError / TypeError before (an API audit): text peaks, intensities left out
    with pytest.raises(FastspecError, match="numbers"):
        Spectra.from_arrays([["a", "b"]], [[1.0, 2.0]])
    with pytest.raises(FastspecError, match="numbers"):
        Spectra.from_arrays([[100.0, 200.0]], [["x", "2"]])
    with pytest.raises(FastspecError, match="intensity_list is required"):
        Spectra.from_arrays([[100.0, 200.0]], None)


@pytest.mark.parametrize("label, expected", [
    ("positive", 1), ("POS", 1), ("+", 1), ("negative", -1), ("N", -1), ("-", -1), ("neg", -1),
    ("n/a", 0), ("N/A", 0), ("none", 0), ("na", 0), ("neutral", 0), ("unknown", 0), ("", 0), (None, 0),
])
def test_polarity_labels(label, expected):
    # missing-value markers are unknown polarity, not negative (a query labelled "n/a" must match both)
    s = Spectra.from_arrays([np.array([100.0])], [np.array([1.0])], metadata={"ion_mode": [label]})
    assert s.polarity.tolist() == [expected]


@pytest.mark.parametrize("key", ["ionmode", "IONMODE", "Ion Mode", "polarity"])
def test_polarity_from_an_alias_key(key):
    """Metadata given in memory keeps its keys as written; polarity still reads matchms' ``ionmode`` and the
    other aliases the readers harmonise (``ion_mode`` first when both are there)."""
    s = Spectra.from_arrays([np.array([100.0])] * 3, [np.array([1.0])] * 3,
                            metadata={key: ["negative", "positive", None]})
    assert s.polarity.tolist() == [-1, 1, 0] and s.metadata.column_names == [key]
    both = Spectra.from_arrays([np.array([100.0])], [np.array([1.0])],
                               metadata={key: ["negative"], "ion_mode": ["positive"]})
    assert both.polarity.tolist() == [1]
    # concatenated with spectra keyed ion_mode, the alias still counts where ion_mode is null (it was
    # ignored: negative spectra became unknown and matched positive queries; a search audit)
    a = Spectra.from_arrays([np.array([100.0])] * 2, [np.array([1.0])] * 2, metadata={"ion_mode": ["positive", None]})
    b = Spectra.from_arrays([np.array([100.0])] * 3, [np.array([1.0])] * 3,
                            metadata={key: ["negative", "n/a", None]}, charge=[0, 0, 2])
    assert Spectra.concat([a, b]).polarity.tolist() == [1, 0, -1, 0, 1]


def test_polarity_from_the_adduct_where_nothing_else_says():
    """Readers fill the charge from the adduct; metadata given in memory may hold only the adduct. Its sign
    decides where no ion mode and no charge do ([M-H]- spectra were of unknown polarity and matched positive
    queries; a search audit), never against them."""
    s = Spectra.from_arrays([np.array([100.0])] * 6, [np.array([1.0])] * 6, charge=[0, 0, 0, 0, 1, 0],
                            metadata={"Precursor_Type": ["[M-H]-", "[M+H]+", "M-H", "garbage", "[M-H]-", "[M+H]+"],
                                      "ionmode": [None, None, None, None, None, "negative"]})
    assert s.polarity.tolist() == [-1, 1, -1, 0, 1, -1]


def test_metadata_with_nan_in_a_text_column():
    """pandas' missing value (a float NaN) in a column of strings is null, in both metadata forms (a dict of
    columns used to raise a bare ArrowTypeError, a list of dicts stored the text 'nan'); "NaN" as a formula
    is none (it would read as N + Na). From an audit."""
    from fastspec.chem.formula import canonical_formulas

    cols = {"formula": np.array(["C6H12O6", np.nan], dtype=object), "n": np.array([1, 2])}
    rows = [{"formula": "C6H12O6", "n": 1}, {"formula": float("nan"), "n": 2}]
    for md in (cols, rows):
        s = Spectra.from_arrays([[100.0]] * 2, [[1.0]] * 2, metadata=md)
        assert s.column("formula") == ["C6H12O6", None] and s.column("n") == [1, 2]
    assert canonical_formulas(["NaN", "nan", "INF", "-inf", "Na", "NaCl"]) == [None] * 4 + ["Na", "ClNa"]


def test_in_memory_input_edge_cases():
    """From an audit of the in-memory constructors: an intensity beyond float32's range became inf and the
    peak (the base peak) was dropped without a word; charges written as text in metadata became 0 (their
    polarity lost, so a positive query matched them); a float charge column lost its values; a negative row
    in ``take`` read another spectrum's peaks; a pandas DataFrame as metadata raised an unrelated error, and
    text precursors a bare numpy error."""
    import pandas as pd

    with pytest.raises(FastspecError, match="beyond float32"):
        Spectra.from_arrays([[100.0, 200.0]], [[1.0, 1e39]])
    with pytest.raises(FastspecError, match="beyond float32"):
        Spectra(np.array([0, 1]), np.array([100.0]), np.array([-1e40]))
    assert Spectra.from_arrays([[100.0]], [[3e38]]).intensity[0] == np.float32(3e38)
    s = Spectra.from_arrays([[1.0]] * 4, [[1.0]] * 4, metadata={"charge": ["1-", "2+", "-1", None]})
    assert s.charge.tolist() == [-1, 2, -1, 0] and s.polarity.tolist()[:3] == [-1, 1, -1]
    s = Spectra.from_arrays([[1.0]] * 4, [[1.0]] * 4, metadata={"charge": [2.0, -1.0, 1.5, float("nan")]})
    assert s.charge.tolist() == [2, -1, 0, 0]
    assert Spectra.from_arrays([[1.0]] * 2, [[1.0]] * 2, charge=["2-", "+1"]).charge.tolist() == [-2, 1]
    assert Spectra.from_arrays([[1.0]] * 3, [[1.0]] * 3, charge=[1.5, -2.0, np.nan]).charge.tolist() == [0, -2, 0]
    s = Spectra.from_arrays([[1.0], [2.0, 3.0], [4.0]], [[1.0], [1.0, 1.0], [1.0]])
    for rows in ([-2], [3], [0, -1]):
        with pytest.raises(IndexError, match="take"):
            s.take(np.array(rows))
        with pytest.raises(IndexError, match="take"):
            s.take(np.array(rows), metadata=False)
    assert s[[-2]].mz.tolist() == [2.0, 3.0]
    df = pd.DataFrame({"id": ["a", "b"], "precursor_mz": [200.0, 300.0]})
    s = Spectra.from_arrays([[100.0], [150.0]], [[1.0], [1.0]], metadata=df)
    assert s.column("id") == ["a", "b"] and s.precursor_mz.tolist() == [200.0, 300.0]
    s = Spectra.from_arrays([[100.0], [150.0]], [[1.0], [1.0]], precursor_mz=pd.Series(["200.1", "n/a"]))
    assert s.precursor_mz[0] == 200.1 and np.isnan(s.precursor_mz[1])
    with pytest.raises(FastspecError, match=r"precursor_mz\[1\] = 'abc'"):
        Spectra.from_arrays([[100.0], [150.0]], [[1.0], [1.0]], precursor_mz=["200", "abc"])


def test_pandas_inputs_with_mixed_types_and_missing_values():
    """From a review: a DataFrame column of mixed types raised pyarrow's error (a dict of the same columns
    was read); a nullable Float64 precursor column's <NA> was refused as no number."""
    import pandas as pd

    df = pd.DataFrame({"charge": [1, "2-", None, 3]})
    s = Spectra.from_arrays([[1.0]] * 4, [[1.0]] * 4, metadata=df)
    assert s.charge.tolist() == [1, -2, 0, 3]
    s = Spectra.from_arrays([[100.0], [150.0]], [[1.0], [1.0]], precursor_mz=pd.Series([200.0, None], dtype="Float64"))
    assert s.precursor_mz[0] == 200.0 and np.isnan(s.precursor_mz[1])


def test_has_column_agrees_with_column_names():
    """has_column answers ``key in table.column_names`` (duplicate names included) without the list."""
    from fastspec.spectra import has_column

    tables = [pa.table({"id": ["a"], "ion_mode": ["positive"]}), pa.table({}),
              pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["x", "x"])]
    for t in tables:
        for key in ("id", "ion_mode", "x", "missing", ""):
            assert has_column(t, key) == (key in t.column_names)


def test_out_of_range_charge_is_unknown_however_given():
    """A charge beyond int8 is 0 (unknown) whether given as an array, an integer or float metadata column, or
    text, as the readers read ``CHARGE=300``; in-range values, signs and text forms are kept."""
    mz, it = [[1.0]] * 5, [[1.0]] * 5
    vals = [300, -200, 127, -2, 1]
    want = [0, 0, 127, -2, 1]
    assert Spectra.from_arrays(mz, it, charge=vals).charge.tolist() == want
    assert Spectra.from_arrays(mz, it, charge=np.array(vals, np.int64)).charge.tolist() == want
    assert Spectra.from_arrays(mz, it, metadata={"charge": vals}).charge.tolist() == want
    assert Spectra.from_arrays(mz, it, metadata={"charge": [float(v) for v in vals]}).charge.tolist() == want
    assert Spectra.from_arrays(mz, it, metadata={"charge": ["300", "200-", "127", "2-", "1+"]}).charge.tolist() == want
    assert Spectra.from_arrays([[1.0]] * 3, [[1.0]] * 3, charge=[np.nan, 1.5, np.inf]).charge.tolist() == [0, 0, 0]
    # -128 fits int8 but not +-127: unknown in an int8 array too
    assert Spectra.from_arrays([[1.0]] * 2, [[1.0]] * 2, charge=np.array([-128, 2], np.int8)).charge.tolist() == [0, 2]
    # integers beyond 2**53 (garbage) are unknown, not an ArrowInvalid from a safe float cast
    huge = [pa.array([2 ** 60, 2], pa.int64()), pa.array([2 ** 64 - 1, 2], pa.uint64()), pa.array([-2 ** 63, 2], pa.int64())]
    for col in huge:
        assert Spectra.from_arrays([[1.0]] * 2, [[1.0]] * 2, metadata=pa.table({"charge": col})).charge.tolist() == [0, 2]


def test_has_column_takes_only_names():
    """A key that is no column name (None, a number, bytes) is no column, as ``key in column_names`` said."""
    from fastspec.spectra import has_column

    s = Spectra.from_arrays([[1.0]], [[1.0]], metadata={"id": ["a"]})
    assert not has_column(s.metadata, None) and not has_column(s.metadata, 0) and not has_column(s.metadata, b"id")
    assert s[0].get(0) is None and s.column(None) == [None]
