"""Library index: build / open / append / verify, atomic builds, refusal of bad indexes."""
from __future__ import annotations

import json
import os
import shutil
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastspec.errors import FastspecError, IndexFormatError, ParameterError
from fastspec.library import REASON_NO_PEAKS, Library
from fastspec.spectra import Spectra

N_LIB = 3000
N_QUERY = 120


def massbank_subset(path: Path, n_lib: int = N_LIB, n_query: int = N_QUERY, seed: int = 0) -> tuple[Spectra, Spectra]:
    """Disjoint random library / query subsets of MassBank (both polarities), as Spectra."""
    table = pq.read_table(path)
    rng = np.random.default_rng(seed)
    rows = rng.choice(table.num_rows, size=n_lib + n_query, replace=False)
    sub = table.take(pa.array(rows))
    md = sub.drop(["mz", "intensity"])
    sp = Spectra.from_arrays(sub.column("mz").to_pylist(), sub.column("intensity").to_pylist(), metadata=md)
    return sp[:n_lib], sp[n_lib:]


@pytest.fixture(scope="module")
def subsets(massbank_parquet):
    return massbank_subset(massbank_parquet, n_lib=800, n_query=20)


@pytest.fixture(scope="module")
def raw_lib(subsets, tmp_path_factory):
    lib_sp, _ = subsets
    return Library.build(lib_sp, tmp_path_factory.mktemp("lib") / "raw.fastspec", preprocess=None, faiss=False)


@pytest.fixture(scope="module")
def raw_lib_positive(subsets, tmp_path_factory):
    """``raw_lib`` without MassBank's few zero-intensity peaks (entropy preparation drops those, so an index
    holding them stores no in-place entropy weights)."""
    sp, _ = subsets
    sp = sp.keep_peaks(sp.intensity > 0)
    return Library.build(sp, tmp_path_factory.mktemp("lib") / "raw_positive.fastspec", preprocess=None, faiss=False)


def _copy_index(lib: Library, dst: Path) -> Path:
    import shutil

    shutil.copytree(lib.path, dst)
    return dst


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_preserves_spectra(subsets, raw_lib):
    lib_sp, _ = subsets
    lib = Library.open(raw_lib.path)
    assert len(lib) == len(lib_sp)
    assert lib.n_rejected == 0 and lib.manifest["counts"]["n_read"] == len(lib_sp)
    got = lib.spectra(metadata=["id"])
    # peaks as read, the few zero-intensity peaks MassBank has included (matchms keeps them)
    assert 0 < (lib_sp.intensity == 0).sum() < 50
    np.testing.assert_array_equal(got.offsets, lib_sp.offsets)
    np.testing.assert_array_equal(got.mz, lib_sp.mz)
    np.testing.assert_array_equal(got.intensity, lib_sp.intensity)
    np.testing.assert_array_equal(got.precursor_mz, lib_sp.precursor_mz)
    assert got.ids == lib_sp.ids
    np.testing.assert_array_equal(np.asarray(lib.polarity), lib_sp.polarity)
    assert lib.preprocess_config is None


def test_open_is_lazy_and_subsets_read_only_needed_rows(raw_lib, subsets):
    lib = Library.open(raw_lib.path)
    assert lib._arrays == {}
    rows = np.array([5, 0, 799, 5])
    md = lib.metadata(rows=rows, columns=["id", "name", "no_such_column"])
    assert md.column("id").to_pylist() == [subsets[0].ids[i] for i in rows]
    assert md.column("no_such_column").null_count == 4
    sub = lib.spectra(rows)
    from fastspec.library import drop_invalid_peaks

    np.testing.assert_array_equal(sub.mz, drop_invalid_peaks(subsets[0].take(rows)).mz)
    # the container-free gather the exact search uses gives the same peaks (float64 on request)
    off, mz, it, pmz = lib.peaks(rows, intensity_dtype=np.float64)
    np.testing.assert_array_equal(off, sub.offsets)
    np.testing.assert_array_equal(mz, sub.mz)
    np.testing.assert_array_equal(it, sub.intensity.astype(np.float64))
    np.testing.assert_array_equal(pmz, sub.precursor_mz)


def test_metadata_rows_across_row_groups_and_cache_budget(subsets, tmp_path, monkeypatch):
    """Scattered rows (any order, repeats) read through the row-group cache equal the full table's rows,
    with the schema's types, across many row groups and with a cache budget smaller than one group."""
    import fastspec.library as L
    from fastspec._rowgroups import RowGroupReader
    from fastspec.errors import ParameterError

    monkeypatch.setattr(L, "_METADATA_ROW_GROUP", 37)
    lib = Library.build(subsets[0], tmp_path / "rg.fastspec", preprocess=None, faiss=False)
    assert lib.manifest["build"]["metadata_row_group"] == 37
    full = lib.metadata()
    assert pq.ParquetFile(lib.path / "metadata.parquet").metadata.num_row_groups == -(-len(lib) // 37)
    rng = np.random.default_rng(1)
    cols = ["id", "name", "precursor_mz", "formula", "charge"]
    cols = [c for c in cols if c in full.column_names]
    for budget in (None, 1):
        if budget is not None:
            lib._cache["row_reader"] = RowGroupReader(lib.path / "metadata.parquet", cache_bytes=budget)
        for _ in range(3):
            rows = rng.integers(0, len(lib), 60)
            rows[:3] = [len(lib) - 1, 0, rows[5]]  # last (short) group, first, a repeat
            got = lib.metadata(rows=rows, columns=cols)
            assert got.equals(full.select(cols).take(pa.array(rows)))
        if budget is not None:
            assert lib._row_reader()._bytes <= budget  # nothing is held past the budget
    assert lib.metadata(rows=np.zeros(0, np.int64), columns=["id"]).num_rows == 0
    with pytest.raises(ParameterError, match="metadata rows"):
        lib.metadata(rows=[len(lib)], columns=["id"])


@pytest.mark.parametrize("which", ["raw_lib", "raw_lib_positive"])
def test_derived_structures_are_consistent(request, which):
    lib = request.getfixturevalue(which)
    off, mz = np.asarray(lib.array("offsets")), np.asarray(lib.array("mz"))
    fmz, fspec = np.asarray(lib.array("frag_mz")), np.asarray(lib.array("frag_spec"))
    assert fmz.shape[0] == mz.shape[0]
    # entries name spectra by scan id (base peak, second peak, precursor m/z); each points at a peak of its
    # spectrum with that m/z (neutral loss)
    scan_rows = np.asarray(lib.scan_rows())
    assert np.array_equal(np.sort(scan_rows), np.arange(len(lib)))
    # ids ordered by base-peak m/z (0.01 Da), then second-peak m/z (0.1 Da), then precursor m/z
    from fastspec.kernels.peaks import top_peaks_mz

    top = top_peaks_mz(off, mz, lib.array("intensity"))[scan_rows]
    pm = np.asarray(lib.precursor_mz)[scan_rows]
    keys = list(zip(np.round(top[:, 0], 2), np.round(top[:, 1], 1), np.where(np.isfinite(pm), pm, np.inf)))
    assert keys == sorted(keys)
    fspec = np.asarray(scan_rows)[fspec]
    owner = np.repeat(np.arange(len(lib)), np.diff(off))
    np.testing.assert_array_equal(np.sort(fspec), np.sort(owner))
    pmz = np.asarray(lib.precursor_mz)
    nl, nspec = np.asarray(lib.array("nl_mz")), np.asarray(lib.array("nl_spec"))
    nspec = np.asarray(scan_rows)[nspec]
    assert nl.shape[0] == int(np.diff(off)[np.isfinite(pmz)].sum())
    for e in range(0, fmz.shape[0], 7):
        r = fspec[e]
        assert np.any(mz[off[r]:off[r + 1]].astype(np.float32) == fmz[e])
    for e in range(0, nl.shape[0], 7):
        r = nspec[e]
        assert np.any((pmz[r] - mz[off[r]:off[r + 1]]).astype(np.float32) == nl[e])
    # both indexes: negative, positive, unknown polarity, each group sorted and holding only its spectra
    pol = np.asarray(lib.polarity)
    assert (pol > 0).any() and (pol < 0).any()  # the fixture exercises both groups
    for vals, spec, bounds in ((fmz, fspec, lib.array("frag_groups")), (nl, nspec, lib.array("nl_groups"))):
        assert bounds[0] == 0 and bounds[-1] == vals.shape[0] and bounds.shape == (4,)
        for g, ok in enumerate((pol < 0, pol > 0, pol == 0)):
            a, b = bounds[g], bounds[g + 1]
            assert np.all(np.diff(vals[a:b]) >= 0) and np.all(ok[spec[a:b]])
    order, srt = np.asarray(lib.array("prec_order")), np.asarray(lib.array("prec_sorted"))
    n_fin = int(np.isfinite(pmz).sum())
    assert np.all(np.diff(srt[:n_fin]) >= 0) and np.array_equal(pmz[order], srt, equal_nan=True)
    # the precursor-ordered peak copy: position p holds the peaks of row order[p]
    pos = np.arange(0, n_fin, 7)
    by_pos = lib.peaks(pos, by_precursor=True)
    by_row = lib.peaks(order[pos])
    for a, b in zip(by_pos, by_row):
        np.testing.assert_array_equal(a, b)
    poff, pint = np.asarray(lib.array("prec_offsets")), np.asarray(lib.array("prec_intensity"), np.float64)
    assert poff[-1] == int(np.diff(off)[order[:n_fin]].sum())
    norms = [np.sqrt(np.sum(pint[poff[p]:poff[p + 1]] ** 2)) for p in range(n_fin)]
    np.testing.assert_allclose(lib.array("prec_norm"), norms, rtol=1e-12)
    # the copy's entropy weights: what entropy search prepares from those peaks (stored peaks: no cleaning)
    from fastspec.similarity import prepare_csr

    zeros = (np.asarray(lib.array("intensity")) == 0).any()
    assert zeros == (which == "raw_lib")  # entropy preparation drops zero intensities: no weights stored
    assert lib.has_array("entropy_w") != zeros and lib.has_array("prec_entropy_w") != (pint == 0).any()
    if not zeros:
        prep = prepare_csr(poff, lib.array("prec_mz"), lib.array("prec_intensity"), lib.array("prec_sorted")[:n_fin],
                           "entropy", clean=False)
        np.testing.assert_array_equal(prep.offsets, poff)
        np.testing.assert_array_equal(lib.array("prec_entropy_w"), prep.w)
        # and in library order (every spectrum, with a precursor or not)
        prep = prepare_csr(off, lib.array("mz"), lib.array("intensity"), lib.array("precursor_mz"), "entropy", clean=False)
        np.testing.assert_array_equal(prep.offsets, off)
        np.testing.assert_array_equal(lib.array("entropy_w"), prep.w)
    inten = np.asarray(lib.array("intensity"), np.float64)
    norms = [np.sqrt(np.sum(inten[off[i]:off[i + 1]] ** 2)) for i in range(len(lib))]
    np.testing.assert_allclose(lib.array("norm"), norms, rtol=1e-12)
    # formula buckets hold exactly the spectra with that canonical formula
    keys, foff, fids = lib.keys("formula"), np.asarray(lib.array("formula_offsets")), np.asarray(lib.array("formula_ids"))
    canon = lib.metadata(columns=["formula_canonical"]).column("formula_canonical").to_pylist()
    for b in range(0, keys.shape[0], max(1, keys.shape[0] // 25)):
        members = fids[foff[b]: foff[b + 1]]
        assert sorted(members.tolist()) == [i for i, f in enumerate(canon) if f == keys[b]]


def test_info_counts(raw_lib):
    info = raw_lib.info()
    assert info["n_spectra"] == len(raw_lib)
    assert info["format_version"] == raw_lib.format_version
    assert info["n_positive"] + info["n_negative"] <= info["n_spectra"]
    raw_lib.verify()


def test_rejected_spectra_are_counted(tmp_path):
    sp = Spectra.from_arrays([[100.0, 200.0], [], [50.0]], [[1.0, 2.0], [], [3.0]], precursor_mz=[300.0, 200.0, None],
                             metadata={"id": ["a", "b", "c"]})
    lib = Library.build(sp, tmp_path / "x.fastspec", preprocess=None, faiss=False)
    assert len(lib) == 2 and lib.n_rejected == 1
    assert lib.rejected == {REASON_NO_PEAKS: 1}
    assert lib.manifest["counts"]["n_read"] == 3
    assert lib.metadata(columns=["id"]).column("id").to_pylist() == ["a", "c"]


def test_hits_map_back_to_input_positions(tmp_path):
    """Rows skip rejected spectra; input_index / Hits.input_indices / the hit table give the caller's
    positions, also after an append (which continues the numbering)."""
    mzs = [[100.0, 200.0], [], [50.0, 150.0], [], [100.0, 200.0]]
    ints = [[1.0, 2.0], [], [3.0, 1.0], [], [1.0, 2.0]]
    sp = Spectra.from_arrays(mzs, ints, precursor_mz=[300.0] * 5, metadata={"id": list("abcde")})
    lib = Library.build(sp, tmp_path / "x.fastspec", preprocess=None, faiss=False)
    assert len(lib) == 3 and lib.input_index.tolist() == [0, 2, 4]
    hits = lib.search(sp[np.array([4, 2])], k=3, mode="open", tolerance=0.01, progress=False)
    assert hits.indices[0, :2].tolist() == [0, 2] and hits.input_indices[0, :2].tolist() == [0, 4]
    assert hits.input_indices[1, 0] == 2 and (hits.input_indices[hits.indices < 0] == -1).all()
    table = hits.to_arrow()
    got = {(r["query_index"], r["library_input_index"]): r["library_id"] for r in table.to_pylist()}
    assert all("abcde"[pos] == lid for (_, pos), lid in got.items())
    lib.append(sp)  # five more inputs, two rejected again
    assert len(lib) == 6 and lib.input_index.tolist() == [0, 2, 4, 5, 7, 9]
    assert lib.manifest["counts"]["n_input"] == 10
    assert Library.open(lib.path, verify=True).input_index.tolist() == [0, 2, 4, 5, 7, 9]
    # an index written before positions were recorded: known only if nothing was rejected
    old = Library.open(lib.path)
    del old.manifest["files"]["input_index.npy"]
    assert old.input_index is None
    hits = old.search(sp[:1], k=2, mode="open", tolerance=0.01, progress=False)
    assert hits.input_indices is None and hits.to_arrow().column("library_input_index").null_count == 2
    with pytest.raises(IndexFormatError, match="rebuild"):
        old.append(sp)
    old.manifest["counts"]["n_rejected"] = 0
    assert old.input_index.tolist() == list(range(6))


def test_build_refuses_existing_target_unless_overwrite(raw_lib, subsets, tmp_path):
    dst = _copy_index(raw_lib, tmp_path / "lib.fastspec")
    small = subsets[0][:10]
    with pytest.raises(IndexFormatError, match="exists"):
        Library.build(small, dst, preprocess=None, faiss=False)
    lib = Library.build(small, dst, preprocess=None, faiss=False, overwrite=True)
    assert len(lib) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.fastspec"]  # no temp/old dirs left


# ------------------------------------------------------------------------------------------ refusal
def test_open_missing_or_not_an_index(raw_lib, tmp_path):
    with pytest.raises(FileNotFoundError):
        Library.open(tmp_path / "nope.fastspec")
    # a rebuild killed between moving the old index aside and renaming the new one in: say where it is
    _copy_index(raw_lib, tmp_path / ".gone.fastspec.old-1234abcd")
    with pytest.raises(IndexFormatError, match=r"interrupted rebuild left the previous index at .*old-1234abcd"):
        Library.open(tmp_path / "gone.fastspec")
    _copy_index(raw_lib, tmp_path / "gone.fastspec")  # once it holds an index again, the next build tidies up
    Library.build(raw_lib.spectra()[:5], tmp_path / "gone.fastspec", preprocess=None, faiss=False, overwrite=True)
    assert not list(tmp_path.glob(".gone.fastspec.*"))
    # an index given as input, and a non-index directory as output, are refused before any reading
    with pytest.raises(FastspecError, match="is a fastspec library index, not spectra"):
        Library.build(raw_lib.path, tmp_path / "x.fastspec")
    with pytest.raises(FastspecError, match="got int"):
        raw_lib.append(5)
    # any iterable of paths (Path.glob) is a list of inputs
    import fastspec.io as fio

    fio.write(raw_lib.spectra()[:4], str(tmp_path / "a.mgf"))
    fio.write(raw_lib.spectra()[4:7], str(tmp_path / "b.mgf"))
    assert len(Library.build(tmp_path.glob("*.mgf"), tmp_path / "g.fastspec", preprocess=None, faiss=False)) == 7
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_text("x")
    with pytest.raises(IndexFormatError, match="not a library index"):
        Library.build("no-such-file.mgf", tmp_path / "photos", overwrite=True)
    for kw in ({"threads": 0}, {"faiss_params": {"nprob": 4}}):  # refused before anything is read
        with pytest.raises(ParameterError):
            Library.build(tmp_path / "a.mgf", tmp_path / "t.fastspec", **kw)
    # FAISS options a build could not use: one clear line before any work, not a faiss traceback at the end
    for fp, why in (({"index": "bogus"}, "cannot build index 'bogus'"), ({"theta_index": "IVF{nlst},PQ8"}, "theta_index"),
                    ({"dim": 100}, "theta_index=None"), ({"theta_nlist": -5}, "theta_nlist"),
                    ({"nlist": 2.5}, "nlist"), ({"theta_index": 5}, "index description")):
        with pytest.raises(ParameterError, match=re.escape(why)):
            Library.build(tmp_path / "a.mgf", tmp_path / "t.fastspec", faiss_params=fp)
    assert not (tmp_path / "t.fastspec").exists()
    assert Library.build(tmp_path / "a.mgf", tmp_path / "t.fastspec", faiss=False, faiss_params={"dim": 100}).n_spectra
    # a file is never replaced by an index, not even with overwrite (the input named twice)
    before = (tmp_path / "a.mgf").read_bytes()
    with pytest.raises(IndexFormatError, match="it is a file"):
        Library.build(tmp_path / "a.mgf", tmp_path / "a.mgf", overwrite=True)
    assert (tmp_path / "a.mgf").read_bytes() == before
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="not a library index"):
        Library.open(tmp_path / "empty")


def test_format_2_index_is_still_searched(raw_lib, tmp_path):
    """A format-2 index (fragment entries name library rows, no ``scan_rows``) opens and gives the same
    hits as the format-3 index whose entries name spectra by scan id."""
    from fastspec import _indexfmt

    dst = _copy_index(raw_lib, tmp_path / "v2.fastspec")
    rows = np.load(dst / "scan_rows.npy")
    for name in ("frag_spec", "nl_spec"):
        np.save(dst / f"{name}.npy", rows[np.load(dst / f"{name}.npy")].astype(np.int32))
    (dst / "scan_rows.npy").unlink()
    m = json.loads((dst / "manifest.json").read_text())
    del m["build"]["scan_order"]
    m.pop("files")
    _indexfmt.write_manifest(dst, m)
    m = json.loads((dst / "manifest.json").read_text())
    m["format_version"] = 2
    m[_indexfmt.MANIFEST_CHECKSUM] = _indexfmt._manifest_digest(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    old = Library.open(dst)
    assert old.format_version == 2 and old.scan_rows() is None
    queries = raw_lib.spectra(np.arange(0, len(raw_lib), max(1, len(raw_lib) // 40)))
    for kw in (dict(mode="open"), dict(mode="open", metric="entropy"), dict(mode="analog")):
        a, b = raw_lib.search(queries, k=5, **kw), old.search(queries, k=5, **kw)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_old_version_is_refused(raw_lib, tmp_path):
    dst = _copy_index(raw_lib, tmp_path / "old.fastspec")
    m = json.loads((dst / "manifest.json").read_text())
    m["format_version"] = 0
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="format version 0"):
        Library.open(dst)


def test_truncated_file_is_refused(raw_lib, tmp_path):
    dst = _copy_index(raw_lib, tmp_path / "trunc.fastspec")
    p = dst / "frag_spec.npy"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match="truncated"):
        Library.open(dst)
    (dst / "mz.npy").unlink()
    with pytest.raises(IndexFormatError):
        Library.open(dst)


@pytest.mark.parametrize("where", ["head", "middle"])
def test_corrupted_file_is_refused(raw_lib, tmp_path, where):
    dst = _copy_index(raw_lib, tmp_path / f"bad-{where}.fastspec")
    p = dst / "mz.npy"
    data = bytearray(p.read_bytes())
    data[200 if where == "head" else len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    if where == "head":  # the cheap open-time check reads the first and last 64 KiB
        with pytest.raises(IndexFormatError, match="corrupted"):
            Library.open(dst)
    with pytest.raises(IndexFormatError, match="corrupted"):
        Library.open(dst, verify=True)


def test_a_damaged_parquet_page_is_refused_when_read(raw_lib, tmp_path):
    """The index's Parquet files carry page checksums: a flipped byte the open-time check cannot see (past the
    first and last 64 KiB of a large file; here the file is damaged after opening) is refused when its page
    is read, where zstd alone decodes it to other values without an error (as the flip chosen here is)."""
    import pyarrow.parquet as pq

    dst = _copy_index(raw_lib, tmp_path / "pages.fastspec")
    lib = Library.open(dst)
    p = dst / "metadata.parquet"
    orig = p.read_bytes()
    ref = pq.read_table(p)
    for off in range(len(orig) // 4, 3 * len(orig) // 4, 7):
        data = bytearray(orig)
        data[off] ^= 0x5A
        p.write_bytes(bytes(data))
        try:
            if not pq.read_table(p).equals(ref):  # read without verifying: other values, no error
                break
        except (OSError, pa.ArrowInvalid):
            continue
    else:
        pytest.fail("no flip decodes silently")
    with pytest.raises(IndexFormatError, match="metadata.parquet is unreadable or corrupted"):
        lib.metadata()
    with pytest.raises(IndexFormatError, match="metadata.parquet is unreadable or corrupted"):
        lib.metadata(rows=np.arange(len(lib)))


@pytest.mark.parametrize("name,value", [("frag_spec", 10**9), ("scan_rows", -3), ("prec_order", 10**7),
                                        ("offsets", 10**12), ("formula_code", 999), ("wblk_loc", 60000),
                                        ("input_index", 10**9)])
def test_out_of_range_ids_are_refused_on_first_use(raw_lib, tmp_path, name, value):
    """A damaged array that addresses others (a byte flipped in the middle of a large file passes the
    open-time edge checksums; here the manifest is rewritten to match, as if it had) is refused when first
    loaded: the kernels index with its values unchecked, and a search segfaulted."""
    from fastspec import _indexfmt as fmt

    dst = _copy_index(raw_lib, tmp_path / "bad.fastspec")
    arr = np.load(dst / f"{name}.npy")
    arr[arr.shape[0] // 2] = value
    np.save(dst / f"{name}.npy", arr)
    m = fmt.read_manifest(dst)
    fmt.write_manifest(dst, m, {k: v for k, v in m["files"].items() if k != f"{name}.npy"})
    lib = Library.open(dst)  # the files agree with the manifest
    with pytest.raises(IndexFormatError, match=f"corrupted: {name} "):
        lib.array(name)
    if name in ("formula_code", "input_index"):  # read for hit tables and filters, not by these searches
        return
    q, refused = raw_lib.spectra()[:3], 0
    for mode in ("open", "analog", "identity"):
        try:
            Library.open(dst).search(q, k=2, mode=mode, metric="entropy" if mode == "open" else None)
        except IndexFormatError as e:
            refused += "corrupted" in str(e)
    assert refused


@pytest.fixture(scope="module")
def synth_lib(tmp_path_factory):
    from fastspec import synth

    return Library.build(synth.generate(300, seed=11), tmp_path_factory.mktemp("synth") / "s.fastspec", faiss=False,
                         threads=1)


def _damaged_mz(lib: Library, dst: Path, row: int, value: float) -> Path:
    """A copy of ``lib`` whose stored m/z of ``row``'s middle peak is ``value``, the manifest rewritten to
    match: what a byte flipped inside a large mz.npy looks like to the open-time checks (edges only)."""
    from fastspec import _indexfmt as fmt

    _copy_index(lib, dst)
    mz, off = np.load(dst / "mz.npy"), np.load(dst / "offsets.npy")
    assert off[row + 1] - off[row] >= 3
    mz[(off[row] + off[row + 1]) // 2] = value  # mid-spectrum: the peaks are no longer ascending either
    np.save(dst / "mz.npy", mz)
    m = fmt.read_manifest(dst)
    fmt.write_manifest(dst, m, {k: v for k, v in m["files"].items() if k != "mz.npy"})
    return dst


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # 1e300 cast to int64
@pytest.mark.parametrize("mode,metric,value", [("open", "binned_cosine", np.nan), ("open", "binned_cosine", np.inf),
                                               ("open", "binned_cosine", 1e300), ("formula", "binned_cosine", 1e300)])
def test_damaged_mz_is_reported_not_a_traceback(synth_lib, tmp_path, mode, metric, value):
    """Open binned cosine turned the largest stored m/z into a bin count (NaN, inf: a bare ValueError;
    1e300: bin ids past int64, a ValueError from np.bincount, as in formula mode); now the index is
    reported as corrupted, with the command that checks it, in one line on the command line too."""
    from click.testing import CliRunner

    from fastspec.cli import main

    row = 150
    dst = _damaged_mz(synth_lib, tmp_path / "bad.fastspec", row, value)
    queries = synth_lib.spectra(metadata=True)[row:row + 2]
    with pytest.raises(IndexFormatError, match="looks corrupted.*fastspec info --verify"):
        Library.open(dst).search(queries, k=3, mode=mode, metric=metric, threads=1)
    if mode == "open" and np.isnan(value):  # the command-line case of the report
        from fastspec.io import write

        write(queries, tmp_path / "q.mgf")
        res = CliRunner().invoke(main, ["query", str(tmp_path / "q.mgf"), "-l", str(dst), "-o", str(tmp_path / "h.tsv"),
                                        "--mode", mode, "--metric", metric, "-q", "--threads", "1"])
        assert res.exit_code != 0 and "Traceback" not in res.output
        errors = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
        assert len(errors) == 1 and f"fastspec info --verify {dst}" in errors[0], res.output


def test_nan_stored_mz_does_not_crash_the_scoring_kernel(synth_lib, tmp_path):
    """A NaN library m/z fell in bitset bin int(NaN), far outside it: formula-mode cosine segfaulted.
    It now lands in bin 0 and matches nothing."""
    from fastspec.kernels.matching import _NBINS, _bin

    assert _bin(np.nan, 1.0) == 0 and _bin(np.inf, 1.0) == _NBINS - 1 and _bin(-1.0, 1.0) == 0 and _bin(2.5, 2.0) == 5
    row = 150
    dst = _damaged_mz(synth_lib, tmp_path / "nan.fastspec", row, np.nan)
    queries = synth_lib.spectra(metadata=True)[row:row + 2]
    hits = Library.open(dst).search(queries, k=3, mode="formula", metric="cosine", threads=1)
    want = synth_lib.search(queries, k=3, mode="formula", metric="cosine", threads=1)
    assert (hits.indices[:, 0] >= 0).all() and hits.indices[1].tolist() == want.indices[1].tolist()


def test_manifest_without_its_checksum_is_refused(raw_lib, tmp_path):
    import json

    dst = _copy_index(raw_lib, tmp_path / "nock.fastspec")
    m = json.loads((dst / "manifest.json").read_text())
    del m["manifest_sha256"]  # an edited count with the checksum taken out: not an old manifest
    m["counts"]["n_spectra"] -= 5
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="no checksum"):
        Library.open(dst)


def test_manifest_relabelled_format_2_or_with_counts_that_do_not_add_up_is_refused(raw_lib, tmp_path):
    """A format-3 manifest relabelled 2 with its checksum taken out (format 2 may have none) is refused by
    what it describes; and read = indexed + rejected is checked on open, checksum or not."""
    import json

    from fastspec import _indexfmt

    dst = _copy_index(raw_lib, tmp_path / "down.fastspec")
    m = json.loads((dst / "manifest.json").read_text())
    del m["manifest_sha256"]
    m["format_version"] = 2
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="says format 2 but describes a format-3 index"):
        Library.open(dst)
    m = json.loads((raw_lib.path / "manifest.json").read_text())
    m.pop("manifest_sha256")
    m["counts"]["n_read"] += 7
    m[_indexfmt.MANIFEST_CHECKSUM] = _indexfmt._manifest_digest(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="records read, but"):
        Library.open(dst)
    m["format_version"] = "3"
    (dst / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="format version '3'"):
        Library.open(dst)


def test_open_does_not_hash_whole_files(raw_lib, monkeypatch):
    from fastspec import _indexfmt

    monkeypatch.setattr(_indexfmt, "file_checksum", lambda *a: pytest.fail("open hashed a whole file"))
    Library.open(raw_lib.path)


def test_interrupted_build_leaves_nothing(subsets, tmp_path, monkeypatch):
    from fastspec import _indexfmt

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_indexfmt, "write_manifest", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        Library.build(subsets[0][:50], tmp_path / "lib.fastspec", preprocess=None, faiss=False)
    assert list(tmp_path.iterdir()) == []


def test_failed_background_write_fails_the_build(subsets, tmp_path, monkeypatch):
    """An array written on the writer thread that fails (disk full) fails the build, leaving nothing."""
    from fastspec import _indexfmt

    real = _indexfmt.save_array

    def full(directory, name, arr):
        if name == "frag_mz":
            raise OSError(28, "No space left on device")
        real(directory, name, arr)

    monkeypatch.setattr(_indexfmt, "save_array", full)
    with pytest.raises(OSError, match="No space left"):
        Library.build(subsets[0][:50], tmp_path / "lib.fastspec", preprocess=None, faiss=False)
    assert list(tmp_path.iterdir()) == []


def test_array_writer_entries_match_the_files(tmp_path):
    from fastspec import _indexfmt

    arrays = {f"a{i}": np.arange(1000 * i, dtype=np.float32) for i in range(5)}
    with _indexfmt.ArrayWriter(tmp_path, max_pending_bytes=4096) as w:  # tiny: save() waits on the thread
        for name, a in arrays.items():
            w.save(name, a)
        with pytest.raises(TypeError):
            w.save("bad", np.array([object()]))
        entries = w.finish()
    assert entries == {f"{n}.npy": _indexfmt.describe_file(tmp_path / f"{n}.npy") for n in arrays}
    for name, a in arrays.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"), a)


def test_array_writer_raises_a_failed_write_at_the_next_save(tmp_path):
    from concurrent.futures import wait

    from fastspec import _indexfmt

    with pytest.raises(FileNotFoundError):
        with _indexfmt.ArrayWriter(tmp_path / "missing") as w:
            w.save("a", np.arange(10))
            wait([f for _, f, _ in w._pending])  # the write has failed on the writer thread
            w.save("b", np.arange(10))
            pytest.fail("the failed write was not reported by the next save")


def test_interrupted_rebuild_keeps_old_index(raw_lib, subsets, tmp_path, monkeypatch):
    from fastspec.kernels import fragment

    dst = _copy_index(raw_lib, tmp_path / "lib.fastspec")
    monkeypatch.setattr(fragment, "sorted_peak_index", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        Library.build(subsets[0][:50], dst, preprocess=None, faiss=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.fastspec"]
    assert len(Library.open(dst, verify=True)) == len(raw_lib)


# ------------------------------------------------------------------------------------------ append
def test_append_equals_single_build(subsets, tmp_path):
    lib_sp, queries = subsets
    whole = Library.build(lib_sp, tmp_path / "whole.fastspec", preprocess=None, faiss=False)
    part = Library.build(lib_sp[:500], tmp_path / "part.fastspec", preprocess=None, faiss=False)
    part.append(lib_sp[500:])
    assert len(part) == len(whole)
    assert part.manifest["counts"]["n_read"] == len(lib_sp)
    for name in ("offsets", "mz", "frag_mz", "frag_spec", "nl_mz", "prec_order", "formula_ids", "wcos", "went"):
        np.testing.assert_array_equal(np.asarray(part.array(name)), np.asarray(whole.array(name)), err_msg=name)
    assert part.metadata(columns=["id"]).equals(whole.metadata(columns=["id"]))
    Library.open(part.path, verify=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.fastspec", "whole.fastspec"]


def test_append_rebuilds_faiss_for_the_new_size(subsets, tmp_path):
    """An append rebuilds FAISS from what was asked, not from what the first build resolved to: a
    library grown from a small seed gets the IVF index a build of all its spectra gets (it stayed an
    exhaustive Flat index), and an empty library built with FAISS gets one on its first append (it
    never did). Manifests that did not record the request are read back to the same effect."""
    from fastspec.vectors import requested_params

    lib_sp, _ = subsets
    fp = {"flat_below": 300, "nlist": None}
    whole = Library.build(lib_sp[:1200], tmp_path / "w.fastspec", preprocess=None, faiss_params=fp)
    grown = Library.build(lib_sp[:200], tmp_path / "g.fastspec", preprocess=None, faiss_params=fp)
    assert grown.manifest["build"]["faiss"]["index"] == "Flat"
    grown.append(lib_sp[200:1200])
    a, b = whole.manifest["build"]["faiss"], grown.manifest["build"]["faiss"]
    assert a["index"].startswith("IVF") and (b["index"], b["nlist"]) == (a["index"], a["nlist"])
    empty = Library.build(Spectra.from_arrays([[]], [[]], precursor_mz=[1.0]), tmp_path / "e.fastspec",
                          preprocess=None, faiss=True)
    assert not empty.has_faiss
    empty.append(lib_sp[:50])
    assert empty.has_faiss and empty.search(lib_sp[:2], k=2, mode="open", engine="faiss").indices[0, 0] >= 0
    off = Library.build(lib_sp[:50], tmp_path / "o.fastspec", preprocess=None, faiss=False).append(lib_sp[50:60])
    assert not off.has_faiss
    # older manifests: the resolved defaults are dropped, explicit choices kept
    assert requested_params({"index": "Flat", "nlist": 5, "n_train": 200, "ntotal": 200}, 200) == {}
    assert requested_params({"index": "IVF30,SQ8", "nlist": 30, "ntotal": 1200}, 1200) == {}
    assert requested_params({"index": "IVF64,PQ8", "nlist": 64}, 1200) == {"index": "IVF64,PQ8", "nlist": 64}


def test_input_positions_count_records_the_reader_rejected(subsets, tmp_path):
    """library_input_index numbers the records of the files, the rejected ones included: the same
    positions whether a file is indexed or the spectra are given directly, and across appends."""
    import fastspec.io as fio

    sp = subsets[0][:60]
    bad = [5, 31]
    good = np.setdiff1d(np.arange(len(sp)), bad)
    text = fio.write(sp, tmp_path / "lib.mgf") or (tmp_path / "lib.mgf").read_text()
    recs = text.split("BEGIN IONS")
    for b in bad:  # an unparsable peak line in records 5 and 31
        recs[b + 1] = recs[b + 1].replace("END IONS", "100.0 abc\nEND IONS")
    (tmp_path / "lib.mgf").write_text("BEGIN IONS".join(recs))
    lib = Library.build(tmp_path / "lib.mgf", tmp_path / "a.fastspec", preprocess=None, faiss=False)
    assert lib.n_rejected == 2 and lib.manifest["counts"]["n_read"] == 60
    np.testing.assert_array_equal(np.asarray(lib.input_index), good)
    # appending the same file: its records continue the numbering, rejected ones counted
    lib.append(tmp_path / "lib.mgf")
    np.testing.assert_array_equal(np.asarray(lib.input_index), np.concatenate([good, 60 + good]))
    # several files: positions run over their records in order
    two = Library.build([tmp_path / "lib.mgf", tmp_path / "lib.mgf"], tmp_path / "b.fastspec", preprocess=None,
                        faiss=False)
    np.testing.assert_array_equal(np.asarray(two.input_index), np.concatenate([good, 60 + good]))


def test_input_files_name_each_hit_s_file(subsets, tmp_path):
    """The index records its inputs (files with their record counts, appends continued, spectra given in
    memory as such); ``input_file`` and the hit table's ``library_file`` name the file of each library
    spectrum, the rejected records of an earlier file counted."""
    import fastspec.io as fio

    sp = subsets[0][:40]
    fio.write(sp[:20], tmp_path / "a.mgf")
    text = (tmp_path / "a.mgf").read_text().split("BEGIN IONS")
    text[4] = text[4].replace("END IONS", "100.0 abc\nEND IONS")  # record 3 of a.mgf is rejected
    (tmp_path / "a.mgf").write_text("BEGIN IONS".join(text))
    fio.write(sp[20:], tmp_path / "b.msp")
    a, b = str(tmp_path / "a.mgf"), str(tmp_path / "b.msp")
    lib = Library.build([a, b], tmp_path / "l.fastspec", preprocess=None, faiss=False)
    fa, fb = {"path": a, "records": 20, "source": "file"}, {"path": b, "records": 20, "source": "file"}
    assert lib.input_files == [fa, fb]
    assert lib.info()["input_files"] == [fa, fb] and lib.info()["n_input_files"] == 2
    assert lib.input_file(np.arange(len(lib))) == [a] * 19 + [b] * 20
    lib.append(sp[:5])
    assert lib.input_files == [fa, fb, {"path": None, "records": 5, "source": "memory"}]
    assert lib.input_file(np.array([0, 19, 38, 39, 43])) == [a, b, b, None, None]
    # the hit table: every hit row names its row's file (b's first spectrum finds itself first)
    hits = lib.search(Spectra.concat([sp[20:21], sp[:3]]), k=10, mode="open")
    rows = hits.to_arrow().to_pylist()
    want = {r: (a if r < 19 else b if r < 39 else None) for r in range(len(lib))}
    assert all(r["library_file"] == want[r["library_index"]] for r in rows if r["library_index"] is not None)
    assert rows[0]["library_index"] == 19 and rows[0]["library_file"] == b
    assert {r["library_file"] for r in rows} >= {a, b, None}
    # an index built from spectra in memory: no file, a null column
    mem = Library.build(sp[:10], tmp_path / "m.fastspec", preprocess=None, faiss=False)
    assert mem.input_files == [{"path": None, "records": 10, "source": "memory"}]
    assert mem.search(sp[:2], k=1, mode="identity").to_arrow().column("library_file").null_count == 2


def test_input_files_odd_names_many_files_and_old_indexes(subsets, tmp_path, monkeypatch):
    """A file name that is not UTF-8 survives the index and shows its bytes in the hit table (Arrow
    refuses the surrogate escapes Python holds such names in); a directory of many files keeps the
    manifest small and ``info`` short; an index without the record (older builds) says the source is
    unknown, and appends onto it still add up."""
    import os

    import fastspec.io as fio
    from fastspec import _indexfmt as fmt

    sp = subsets[0][:30]
    d = tmp_path / "d"
    d.mkdir()
    odd = os.fsdecode(b"caf\xe9.mgf")  # Latin-1 bytes: 'caf\udce9.mgf' in Python
    try:
        fio.write(sp[:3], str(d / odd))
    except (UnicodeEncodeError, OSError):
        pytest.skip("the file system refuses non-UTF-8 names")
    for i in range(3, 30):
        fio.write(sp[i:i + 1], d / f"r{i:03d}.mgf")
    lib = Library.build(d, tmp_path / "l.fastspec", preprocess=None, faiss=False)
    files = lib.input_files
    assert len(files) == 28 and sum(f["records"] for f in files) == 30
    assert os.path.basename(files[0]["path"]) == odd  # sorted by name: first
    info = lib.info()
    assert info["n_input_files"] == 28 and len(info["input_files"]) == 20
    assert "inputs" not in lib.manifest and (lib.path / "inputs.parquet").exists()
    table = lib.search(sp[:3], k=3, mode="open").to_arrow()  # the odd file's spectra find themselves
    assert table.column("library_file")[0].as_py().endswith("caf\\xe9.mgf")
    # an older index: no record of its inputs
    real = fmt.read_manifest

    def without_inputs(directory):
        m = real(directory)
        m["files"].pop("inputs.parquet", None)
        return m

    monkeypatch.setattr(fmt, "read_manifest", without_inputs)
    old = Library.open(tmp_path / "l.fastspec")
    assert old.input_files == [{"path": None, "records": 30, "source": "unknown"}]
    assert old.input_file(np.array([0, 29])) == [None, None]
    old.append(sp[:2])
    monkeypatch.undo()
    again = Library.open(tmp_path / "l.fastspec")
    assert again.input_files == [{"path": None, "records": 30, "source": "unknown"},
                                 {"path": None, "records": 2, "source": "memory"}]


def test_an_object_opened_before_another_appends_refuses_to_mix(subsets, tmp_path):
    """Another Library object (another process) appends: this one must not load files of the new index
    next to the arrays it already mapped; a clear error says to open it again."""
    lib_sp, queries = subsets
    Library.build(lib_sp[:500], tmp_path / "a.fastspec", preprocess=None, faiss=True)
    old = Library.open(tmp_path / "a.fastspec")
    before = old.search(queries[:5], k=3, mode="identity")
    Library.open(tmp_path / "a.fastspec").append(lib_sp[500:600])
    again = old.search(queries[:5], k=3, mode="identity")  # arrays already mapped: the old snapshot
    np.testing.assert_array_equal(again.indices, before.indices)
    with pytest.raises(IndexFormatError, match="open it again"):
        old.search(queries[:5], k=3, mode="open")
    with pytest.raises(IndexFormatError, match="open it again"):
        old.search(queries[:5], k=3, mode="analog", engine="faiss")
    fresh = Library.open(tmp_path / "a.fastspec")
    assert len(fresh) > len(old) and fresh.search(queries[:5], k=3, mode="open").indices.shape == (5, 3)


def test_appends_and_builds_never_lose_one_another(subsets, tmp_path):
    """Two appends started from the same index: the second is refused (it used to swap in its own result
    and lose the first's spectra); an append while another holds the index's lock is refused; a build
    without overwrite never replaces an index another build put there meanwhile."""
    import os
    import threading

    from fastspec import _indexfmt as fmt

    lib_sp, _ = subsets
    path = tmp_path / "a.fastspec"
    Library.build(lib_sp[:300], path, preprocess=None, faiss=False)
    a, b = Library.open(path), Library.open(path)
    a.append(lib_sp[300:350])
    with pytest.raises(IndexFormatError, match="open it again"):
        b.append(lib_sp[350:400])
    assert len(Library.open(path)) == 350
    # another process (here: thread) appending right now holds the lock
    held, done = threading.Event(), threading.Event()

    def hold():
        with fmt.index_lock(path):
            held.set()
            done.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(30)
    try:
        with pytest.raises(IndexFormatError, match="being appended to or rebuilt"):
            Library.open(path).append(lib_sp[350:400])
    finally:
        done.set()
        t.join()
    c = Library.open(path).append(lib_sp[350:400])  # free again; the lock is re-entrant for its own swap
    assert len(c) == 400 and len(Library.open(path)) == 400
    # a waiter woken on a directory that was replaced meanwhile locks the new one (flock belongs to the
    # inode: it held the old one's lock, and another append could lock the new index at the same time)
    a_held, a_go, b_in, b_go = (threading.Event() for _ in range(4))

    def holder():
        with fmt.index_lock(path):
            a_held.set()
            a_go.wait(30)

    def waiter():
        with fmt.index_lock(path):
            b_in.set()
            b_go.wait(30)

    ta, tb = threading.Thread(target=holder), threading.Thread(target=waiter)
    ta.start()
    a_held.wait(30)
    tb.start()
    import time

    time.sleep(0.3)  # the waiter is blocked in flock on the current directory
    aside = tmp_path / "aside.fastspec"
    os.rename(path, aside)
    path.mkdir()
    a_go.set()
    try:
        assert b_in.wait(30)
        with pytest.raises(IndexFormatError, match="being appended to or rebuilt"):
            with fmt.index_lock(path, wait=False):
                pass
    finally:
        b_go.set()
        ta.join()
        tb.join()
    os.rmdir(path)
    os.rename(aside, path)
    # two builds of one new target without overwrite: the one finishing second is refused
    target = tmp_path / "b.fastspec"
    with pytest.raises(IndexFormatError, match="another build finished first"):
        with fmt.AtomicDirectory(target, overwrite=False) as tmp:
            (tmp / "x").write_text("second build")
            Library.build(lib_sp[:50], target, preprocess=None, faiss=False)  # the first one lands
    assert len(Library.open(target)) == 50 and not list(tmp_path.glob(".b.fastspec.tmp-*"))


def test_append_preprocesses_with_the_recorded_pipeline(subsets, tmp_path):
    lib_sp, _ = subsets
    lib = Library.build(lib_sp[:300], tmp_path / "p.fastspec", faiss=False)
    lib.append(lib_sp[300:400])
    ref = Library.build(lib_sp[:400], tmp_path / "ref.fastspec", faiss=False)
    assert lib.preprocess_config == ref.preprocess_config
    np.testing.assert_array_equal(np.asarray(lib.array("mz")), np.asarray(ref.array("mz")))
    assert lib.n_rejected == ref.n_rejected


def test_faiss_index_round_trip(subsets, tmp_path):
    lib = Library.build(subsets[0][:400], tmp_path / "f.fastspec", faiss=True)
    assert lib.has_faiss and lib.manifest["build"]["faiss"]["ntotal"] == len(lib)
    Library.open(lib.path, verify=True)
    # the index is memory-mapped when read: a truncated one must be refused before faiss sees it
    p = lib.path / "faiss.index"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(IndexFormatError, match="truncated"):
        Library.open(lib.path)


def test_faiss_search_takes_the_builds_nprobe(subsets, tmp_path, monkeypatch):
    """``faiss_params={"nprobe": n}`` at build time is the engine's default nprobe (it was recorded in the
    manifest and then ignored: searches probed 16 lists); a search's own ``nprobe`` wins."""
    from fastspec import vectors

    lib = Library.build(subsets[0][:400], tmp_path / "n.fastspec", faiss=True,
                        faiss_params={"flat_below": 0, "nlist": 16, "nprobe": 3})
    asked = []
    real = vectors.faiss_search
    monkeypatch.setattr(vectors, "faiss_search", lambda *a, **kw: asked.append(kw.get("nprobe")) or real(*a, **kw))
    q = subsets[1][:5]
    h3 = lib.search(q, k=3, mode="open", engine="faiss")
    h7 = lib.search(q, k=3, mode="open", engine="faiss", nprobe=7)
    assert asked == [3, 7]
    assert (h3.params["nprobe"], h7.params["nprobe"]) == (3, 7)  # the hit table says which was used
    # beyond the inverted lists FAISS probes them all: the table says so, not the number asked for
    nlist = lib.manifest["build"]["faiss"]["nlist"]
    h99 = lib.search(q, k=3, mode="open", engine="faiss", nprobe=99)
    assert nlist < 99 and h99.params["nprobe"] == nlist
    assert np.array_equal(h99.indices, lib.search(q, k=3, mode="open", engine="faiss", nprobe=nlist).indices)
    # the lists of the index itself, not the default count the manifest records (a custom "IVF4,Flat")
    ivf4 = Library.build(subsets[0][:400], tmp_path / "ivf4.fastspec", faiss=True,
                         faiss_params={"flat_below": 0, "index": "IVF4,Flat"})
    assert ivf4.search(q, k=3, mode="open", engine="faiss", nprobe=8).params["nprobe"] == 4
    flat = Library.build(subsets[0][:100], tmp_path / "flat.fastspec", faiss=True)  # a flat index: no lists
    assert flat.manifest["build"]["faiss"]["index"] == "Flat"
    assert flat.search(q, k=3, mode="open", engine="faiss", nprobe=5).params["nprobe"] is None


def test_round_trip_with_default_preprocessing(subsets, tmp_path):
    """The stored peaks are the input after the recorded pipeline; reopened, the pipeline is the same."""
    from fastspec.library import apply_pipeline

    lib_sp, _ = subsets
    lib = Library.build(lib_sp, tmp_path / "p.fastspec", faiss=False)
    again = Library.open(lib.path, verify=True)
    assert again.preprocess_config == lib.preprocess_config is not None
    expect = apply_pipeline(again.pipeline, lib_sp)
    kept = np.flatnonzero(np.diff(expect.offsets) > 0)
    assert len(again) == kept.size and again.n_rejected == len(lib_sp) - kept.size
    expect = expect.take(kept)
    got = again.spectra(metadata=["id"])
    np.testing.assert_array_equal(got.offsets, expect.offsets)
    np.testing.assert_array_equal(got.mz, expect.mz)
    np.testing.assert_array_equal(got.intensity, expect.intensity)
    assert got.ids == expect.ids  # library rows keep the input order


@pytest.mark.parametrize("damage", ["not json", "wrong format", "no file list", "newer version"])
def test_damaged_manifest_is_refused(raw_lib, tmp_path, damage):
    dst = _copy_index(raw_lib, tmp_path / "m.fastspec")
    path = dst / "manifest.json"
    m = json.loads(path.read_text())
    if damage == "not json":
        path.write_text(path.read_text()[:-40])
    else:
        if damage == "wrong format":
            m["format"] = "something-else"
        elif damage == "no file list":
            del m["files"]
        else:
            m["format_version"] = m["format_version"] + 1
        path.write_text(json.dumps(m))
    with pytest.raises(IndexFormatError):
        Library.open(dst)


def test_unlisted_shape_mismatch_is_refused(raw_lib, tmp_path):
    """A file replaced by a valid .npy of another shape (and a manifest updated to match its checksums):
    the dtype/shape recorded in the manifest still catches it when the array is loaded."""
    from fastspec import _indexfmt

    dst = _copy_index(raw_lib, tmp_path / "s.fastspec")
    np.save(dst / "mz.npy", np.zeros(7, np.float64))
    m = json.loads((dst / "manifest.json").read_text())
    entry = _indexfmt.describe_file(dst / "mz.npy")
    m["files"]["mz.npy"].update({k: entry[k] for k in ("size", "blake2b", "edge")})
    m.pop(_indexfmt.MANIFEST_CHECKSUM)
    m[_indexfmt.MANIFEST_CHECKSUM] = _indexfmt._manifest_digest(m)  # a consistent forgery
    (dst / "manifest.json").write_text(json.dumps(m))
    lib = Library.open(dst, verify=True)
    with pytest.raises(IndexFormatError, match="dtype/shape"):
        lib.array("mz")


def test_manifest_that_is_no_regular_file_or_too_deep_is_refused(raw_lib, tmp_path):
    """A FIFO or a link to /dev/zero as manifest.json hung every open or filled the memory, a directory raised
    IsADirectoryError, deeply nested JSON RecursionError (an audit): each is one IndexFormatError now, and
    is_index_dir says no without blocking."""
    import os

    from fastspec import _indexfmt

    for kind in ("fifo", "devzero", "dir", "deep"):
        dst = _copy_index(raw_lib, tmp_path / f"{kind}.fastspec")
        man = dst / "manifest.json"
        man.unlink()
        if kind == "fifo":
            os.mkfifo(man)
        elif kind == "devzero":
            man.symlink_to("/dev/zero")
        elif kind == "dir":
            man.mkdir()
        else:
            man.write_text("[" * 100_000 + "]" * 100_000)
        with pytest.raises(IndexFormatError, match="corrupted manifest"):
            Library.open(dst)
        assert _indexfmt.is_index_dir(dst) is False


def test_metadata_with_another_row_count_is_refused(raw_lib, tmp_path):
    """metadata.parquet is read by library row: one with fewer rows (a consistent forgery of the manifest's
    checksums) gave an IndexError traceback and wrong rows; now a clear error."""
    import pyarrow.parquet as pq

    dst = _copy_index(raw_lib, tmp_path / "m.fastspec")
    table = pq.read_table(dst / "metadata.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), dst / "metadata.parquet")
    _forge_checksums(dst, "metadata.parquet")
    lib = Library.open(dst)
    with pytest.raises(IndexFormatError, match="rows for"):
        lib.metadata(rows=[0])


def test_scan_rows_that_repeat_a_row_are_refused(raw_lib, tmp_path):
    """A damaged scan_rows.npy whose values stay in range but repeat a row left one entry of the scan arrays
    uninitialised, handed to the numba kernels (an audit): refused when the arrays are gathered."""
    dst = _copy_index(raw_lib, tmp_path / "r.fastspec")
    rows = np.load(dst / "scan_rows.npy")
    rows[len(rows) // 2] = rows[len(rows) // 2 + 1]
    np.save(dst / "scan_rows.npy", rows)
    _forge_checksums(dst, "scan_rows.npy")
    lib = Library.open(dst)
    with pytest.raises(IndexFormatError, match="not a permutation"):
        lib.search(lib.spectra()[:3], mode="open", k=3)


def test_overwrite_replaces_an_index_that_lost_its_manifest(raw_lib, tmp_path):
    """The errors tell users to rebuild a damaged index with overwrite; one whose manifest.json was lost was
    refused as "a non-empty directory that is not a library index" (an audit)."""
    dst = _copy_index(raw_lib, tmp_path / "d.fastspec")
    spectra = Library.open(dst).spectra()[:50]
    (dst / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        Library.open(dst)
    Library.build(spectra, dst, faiss=False, overwrite=True, preprocess=None)
    assert len(Library.open(dst)) == 50
    other = tmp_path / "other"
    other.mkdir()
    (other / "offsets.npy").write_bytes(b"x")  # not all of an index's files: no index, not replaced
    with pytest.raises(IndexFormatError, match="not a library index"):
        Library.build(spectra, other, faiss=False, overwrite=True)


def _forge_checksums(dst, name: str) -> None:
    """Make the manifest agree with the file ``name`` as it now is (a consistent forgery: what a byte
    flipped in the middle of a large file looks like to the open-time checks)."""
    from fastspec import _indexfmt

    m = json.loads((dst / "manifest.json").read_text())
    entry = _indexfmt.describe_file(dst / name)
    m["files"][name].update({k: entry[k] for k in ("size", "blake2b", "edge")})
    m.pop(_indexfmt.MANIFEST_CHECKSUM)
    m[_indexfmt.MANIFEST_CHECKSUM] = _indexfmt._manifest_digest(m)
    (dst / "manifest.json").write_text(json.dumps(m))


def test_build_refuses_a_target_whose_previous_index_was_left_aside(raw_lib, tmp_path):
    """A rebuild or append killed between the two renames of its swap leaves the old index at
    .NAME.old-*: a plain build to NAME completed and its cleanup deleted that index (an audit). It is refused
    now, naming the index left aside; overwrite=True builds anew."""
    from fastspec._atomic import aside_prefix

    target = tmp_path / "lib.fastspec"
    aside = tmp_path / f"{aside_prefix(target.name)}0123456789ab"
    _copy_index(raw_lib, aside)
    spectra = Library.open(aside).spectra()
    with pytest.raises(IndexFormatError, match="left the previous index"):
        Library.build(spectra, target, faiss=False)
    assert aside.exists() and not target.exists()
    Library.build(spectra, target, faiss=False, overwrite=True, preprocess=None)
    assert len(Library.open(target)) == len(spectra)


@pytest.mark.parametrize("edit", [("counts", "n_spectra", 1), ("build", "window_block", 512)])
def test_edited_manifest_is_refused_on_open(raw_lib, tmp_path, edit):
    """Counts and build parameters steer the kernels: an edited value must not reach them."""
    section, key, value = edit
    dst = _copy_index(raw_lib, tmp_path / "e.fastspec")
    m = json.loads((dst / "manifest.json").read_text())
    assert key in m[section]
    m[section][key] = value
    (dst / "manifest.json").write_text(json.dumps(m, indent=1))
    with pytest.raises(IndexFormatError, match="edited or corrupted"):
        Library.open(dst)


def test_killed_build_leaves_no_index(massbank_parquet, tmp_path):
    """A build killed (SIGKILL) at any point leaves either nothing at the target or a complete index."""
    import os
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "lib.fastspec"
    proc = subprocess.Popen([sys.executable, "-m", "fastspec", "index", str(massbank_parquet), "-o", str(target),
                             "--no-faiss", "-q", "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # kill as soon as the build has started writing (a temporary sibling directory appears)
        while proc.poll() is None and not any(p.name.startswith(".lib.fastspec.tmp-") for p in tmp_path.iterdir()):
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if target.exists():  # the build won the race: then it is complete
        assert len(Library.open(target, verify=True)) > 0
    else:
        with pytest.raises(FileNotFoundError):
            Library.open(target)
        assert all(p.name.startswith(".") for p in tmp_path.iterdir())  # only the hidden temporary remains
    # the next build of the same target removes the dead build's temporary
    Library.build(massbank_parquet, target, faiss=False, overwrite=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["lib.fastspec"]


def test_ms1_records_are_counted_not_indexed(tmp_path):
    """SIRIUS / MZmine MGF exports interleave MS1 records: the tandem-MS library counts them as rejected."""
    mgf = tmp_path / "mixed.mgf"
    mgf.write_text("BEGIN IONS\nFEATURE_ID=1\nPEPMASS=195.0877\nMSLEVEL=1\n195.0877 1000\n196.091 110\nEND IONS\n"
                   "BEGIN IONS\nFEATURE_ID=1\nPEPMASS=195.0877\nMSLEVEL=2\n138.066 100\n110.07 20\nEND IONS\n"
                   "BEGIN IONS\nFEATURE_ID=2\nPEPMASS=200.1\n120.0 5\nEND IONS\n")
    lib = Library.build([str(mgf)], tmp_path / "m.fastspec", faiss=False)
    c = lib.manifest["counts"]
    assert len(lib) == 2 and c["n_read"] == 3 and c["n_rejected"] == 1
    assert c["rejected"] == {"MS1 spectrum (ms_level 1)": 1}
    assert lib.metadata(columns=["id"]).column("id").to_pylist() == ["1", "2"]
    np.testing.assert_array_equal(lib.input_index, [1, 2])
    # the same file as queries: the MS1 record gets status "ms1" (one row, no hit), the others are searched
    for mode in ("identity", "open"):
        hits = lib.search([str(mgf)], k=2, mode=mode)
        assert hits.status.tolist() == ["ms1", "ok", "ok"]
        assert hits.skipped.tolist() == [True, False, False]
        assert (hits.indices[0] == -1).all() and hits.indices[1, 0] == 0 and hits.indices[2, 0] == 1
    table = hits.to_arrow()  # one row for the MS1 query (no hit), one per hit for the others
    assert table.column("query_index").to_pylist() == [0, 1, 2]
    assert table.column("library_index").to_pylist() == [None, 0, 1]


def test_msn_records_are_counted_not_indexed(tmp_path):
    """mzmine's MSn library exports hold MS3+ records, whose precursor is a fragment: counted, not indexed,
    and not searched as queries (status ``msn``), as the mzML / mzXML readers keep MS2 scans only."""
    from fastspec.io import read
    from fastspec.library import _ms_stages

    mgf = tmp_path / "msn.mgf"
    levels = ["2", "3", "MS3", " ms12 ", "MS2", "1", "ms", None, "Centroid", "30"]
    # as a pandas-written table holds them (a float column with NaN, as text)
    ms1, msn = _ms_stages(pa.table({"ms_level": ["2.0", "3.0", "1.0", "12.00", None]}))
    assert ms1.tolist() == [False, False, True, False, False] and msn.tolist() == [False, True, False, True, False]
    mgf.write_text("".join(
        "BEGIN IONS\nFEATURE_ID=%d\nPEPMASS=195.0877\n%s%d.05 100\n110.07 20\nEND IONS\n"
        % (i, "" if lv is None else f"MSLEVEL={lv}\n", 120 + i) for i, lv in enumerate(levels)))
    ms1, msn = _ms_stages(read(str(mgf)).metadata)
    assert ms1.tolist() == [lv is not None and lv.strip().lower() in ("1", "ms") for lv in levels]
    assert msn.tolist() == [False, True, True, True, False, False, False, False, False, True]
    lib = Library.build([str(mgf)], tmp_path / "m.fastspec", faiss=False, progress=False)
    c = lib.manifest["counts"]
    assert len(lib) == 4 and c["n_read"] == 10 and c["n_rejected"] == 6
    assert c["rejected"] == {"MS1 spectrum (ms_level 1)": 2, "MSn spectrum (ms_level 3 or more)": 4}
    hits = lib.search([str(mgf)], k=1, mode="open")
    assert hits.status.tolist() == ["ok", "msn", "msn", "msn", "ok", "ms1", "ms1", "ok", "ok", "msn"]
    # an index built before MSn records were left out keeps them, and its row numbers, when appended to
    import fastspec.library as fl

    real = fl._ms_stages
    fl._ms_stages = lambda meta: tuple(np.zeros(meta.num_rows, dtype=bool) for _ in range(2))
    try:
        old = Library.build([str(mgf)], tmp_path / "old.fastspec", faiss=False, progress=False)
    finally:
        fl._ms_stages = real
    assert len(old) == 10
    old.append([str(mgf)], progress=False)
    assert len(old) == 14 and old.manifest["counts"]["rejected"] == c["rejected"]
    np.testing.assert_array_equal(old.input_index, np.r_[np.arange(10), 10 + np.flatnonzero(~(ms1 | msn))])
    assert hits.skipped.tolist() == [s in ("ms1", "msn") for s in hits.status.tolist()]
    assert (hits.indices[msn] == -1).all()


def test_all_rejected_build_names_the_first_rejection(tmp_path):
    """An index of inputs whose every record is rejected says where to look: the first rejection's file and line."""
    a, b = tmp_path / "a.mgf", tmp_path / "b.msp"
    a.write_text("BEGIN IONS\nPEPMASS=100\nfoo bar\nEND IONS\n")
    b.write_text("Name: x\nPrecursorMZ: 100\nNum Peaks: 1\nfoo bar\n")
    with pytest.raises(FastspecError, match=r"all 2 records were rejected .*; the first: .*a\.mgf:3: unparsable peak line"):
        Library.build([str(a), str(b)], tmp_path / "x.fastspec", faiss=False, progress=False, allow_empty=False)
    assert not (tmp_path / "x.fastspec").exists()


def test_ms_stages_of_few_rows_as_of_many():
    """A query or a few have their ms_level judged in Python, larger tables with Arrow kernels: the
    same answers for text, integer, float, boolean and missing values."""
    from fastspec import library as L

    columns = [["2", " 3 ", "MS3", "ms12", "MS2", "1", "MS", None, "Centroid", "30", "3.0", "", "ms02", "MS 3"],
               [1, 2, 3, None, 12, 0], [1.0, 2.0, 3.0, None, 12.0, 2.5], [True, False, None],
               [b"1", b"3", b" MS2 ", None]]  # bytes: Arrow reads their text, Python's str() would not
    for values in columns:
        reps = L._FEW_STAGES // len(values) + 2  # enough rows for the vectorised path
        few = [L._ms_stages(pa.table({"ms_level": [v]})) for v in values]
        many = L._ms_stages(pa.table({"ms_level": values * reps}))
        for j in range(2):
            assert [f[j][0] for f in few] * reps == many[j].tolist(), values


def test_massbank_ms_type_ms_is_ms1(tmp_path):
    """MassBank writes ``AC$MASS_SPECTROMETRY: MS_TYPE MS`` for single-stage (EI, MALDI) spectra: not indexed."""
    rec = ("ACCESSION: MSBNK-test-TST0000{i}\nRECORD_TITLE: t{i}\nCH$NAME: t\nCH$FORMULA: C6H6\n"
           "AC$MASS_SPECTROMETRY: MS_TYPE {t}\nAC$MASS_SPECTROMETRY: ION_MODE POSITIVE\n"
           "MS$FOCUSED_ION: PRECURSOR_M/Z 79.05\n"
           "PK$NUM_PEAK: 2\nPK$PEAK: m/z int. rel.int.\n  51.02 100 100\n  77.04 500 999\n//\n")
    p = tmp_path / "mb.txt"
    p.write_text(rec.format(i=1, t="MS") + rec.format(i=2, t="MS2"))
    lib = Library.build([str(p)], tmp_path / "mb.fastspec", faiss=False, progress=False)
    c = lib.manifest["counts"]
    assert len(lib) == 1 and c["n_read"] == 2 and c["rejected"] == {"MS1 spectrum (ms_level 1)": 1}
    assert lib.search([str(p)], k=1, mode="open").status.tolist() == ["ms1", "ok"]


# ---------------------------------------------------------------------------------- threads and processes
def test_append_waits_for_a_search_running_on_the_same_object(subsets, tmp_path):
    """A search still running on a Library object while ``append`` swapped its arrays wrote entries built
    from the old index (filter codes, allowed-row bitmaps) into the new cache: later searches on the object
    gave wrong hits or raised. Now append waits for the searches on the object (and new ones for append)."""
    import threading

    from fastspec import search as fsearch

    lib_sp, q = subsets
    lib = Library.build(lib_sp[:500], tmp_path / "w.fastspec", faiss=True, faiss_params={"flat_below": 0, "nlist": 8})
    lib.search(q, k=5, mode="open", progress=False)  # caches filled
    paused, resume = threading.Event(), threading.Event()
    real = fsearch._Context.filters

    def filters(self):  # the running search is descheduled right after computing its filter codes
        out = real(self)
        if threading.current_thread().name == "searcher" and not paused.is_set():
            paused.set()
            resume.wait(30)
        return out

    fsearch._Context.filters = filters
    try:
        got = {}
        searcher = threading.Thread(name="searcher", target=lambda: got.setdefault(
            "hits", lib.search(q, k=5, mode="open", progress=False)))
        searcher.start()
        assert paused.wait(30)
        appender = threading.Thread(target=lambda: lib.append(lib_sp[500:], progress=False))
        appender.start()
        appender.join(0.5)
        assert appender.is_alive()  # waiting for the search
        resume.set()
        searcher.join(60)
        appender.join(120)
        assert not appender.is_alive() and len(lib) == len(Library.open(lib.path))
    finally:
        fsearch._Context.filters = real
        resume.set()
    before = Library.build(lib_sp[:500], tmp_path / "b.fastspec", faiss=False).search(q, k=5, mode="open", progress=False)
    np.testing.assert_array_equal(got["hits"].indices, before.indices)  # the running search saw the old index
    fresh = Library.open(lib.path)
    for kw in (dict(mode="open"), dict(mode="open", metric="entropy"), dict(mode="identity"),
               dict(mode="analog"), dict(mode="open", engine="faiss"), dict(mode="open", same_adduct=True)):
        a, b = lib.search(q, k=5, progress=False, **kw), fresh.search(q, k=5, progress=False, **kw)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_faiss_threads_restored_and_capped(subsets, tmp_path):
    """faiss's OpenMP thread count was set by every faiss call and never restored (a search with
    threads=1 left later ones single-threaded), nor capped at the cores (threads=64 started 64 threads)."""
    import faiss

    from fastspec.kernels._config import max_threads

    lib_sp, q = subsets
    lib = Library.build(lib_sp[:400], tmp_path / "f.fastspec", faiss=True, faiss_params={"flat_below": 0, "nlist": 8})
    before = faiss.omp_get_max_threads()
    asked = []
    real = faiss.omp_set_num_threads
    faiss.omp_set_num_threads = lambda n: asked.append(n) or real(n)
    try:
        for threads in (1, None, 64):
            lib.search(q, k=3, mode="open", engine="faiss", threads=threads, progress=False)
            lib.search(q, k=3, mode="analog", threads=threads, progress=False)
            assert faiss.omp_get_max_threads() == before, threads
    finally:
        faiss.omp_set_num_threads = real
    assert asked and max(asked) <= max_threads()


def test_metadata_read_from_threads(raw_lib):
    """One ParquetFile read by several threads at once failed ("ReadRangeCache did not find matching cache
    entry", reported as a corrupted index) or crashed; reads of the whole table now take turns."""
    from concurrent.futures import ThreadPoolExecutor

    want = raw_lib.metadata()
    with ThreadPoolExecutor(6) as ex:
        tables = list(ex.map(lambda _: raw_lib.metadata(), range(60)))
    assert all(t.equals(want) for t in tables)


def _child_search(path, queries, out):
    lib = Library.open(path)
    out.put(lib.search(queries, k=3, mode="analog", threads=2, progress=False).indices.tolist())


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # forking is the test
def test_search_in_a_forked_child_after_faiss(subsets, tmp_path):
    """A child forked after the parent ran faiss with 2 threads hung at its first faiss search (GNU OpenMP
    cannot start threads after fork; analog search asks faiss for its first threshold): faiss runs one
    thread in such a child. Same hits as the parent's."""
    import multiprocessing as mp

    lib_sp, q = subsets
    lib = Library.build(lib_sp[:400], tmp_path / "k.fastspec", faiss=True, faiss_params={"flat_below": 0, "nlist": 8})
    want = lib.search(q, k=3, mode="analog", threads=2, progress=False).indices.tolist()
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_search, args=(str(lib.path), q, out))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert child.exitcode == 0 and out.get(timeout=10) == want


def test_append_wait_interrupted_or_fed_by_a_search(subsets, tmp_path):
    """An append interrupted while it waits for the searches on its object (Ctrl-C in a notebook) left the
    object closed to every later search; an append whose input generator searches the same object waited
    for itself. Both now finish: the interrupt propagates and searches run again, and the input is read
    before the append waits for anything."""
    import threading

    from fastspec.io import write

    lib_sp, q = subsets
    lib = Library.build(lib_sp[:300], tmp_path / "i.fastspec", faiss=False)

    class Interrupted(Exception):
        pass

    real = lib._use

    class Interrupting(type(real)):
        def wait(self, timeout=None):
            raise Interrupted

    lib._use = Interrupting(threading.Lock())
    lib._users = 1  # a search running on the object
    with pytest.raises(Interrupted):
        lib.append(lib_sp[300:320])
    lib._use, lib._users = real, 0
    assert not lib._changing and lib.search(q, k=2, mode="open").indices.shape == (len(q), 2)

    paths = []
    for i, part in enumerate((lib_sp[300:350], lib_sp[350:400])):
        paths.append(str(tmp_path / f"part{i}.mgf"))
        write(part, paths[-1])
    done = threading.Event()

    def run():
        lib.append(p for p in paths if lib.search(p, k=1, mode="open").indices.shape[0] > 0)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)
    assert done.is_set(), "append waited for its own input's search"
    assert len(lib) == len(Library.open(lib.path)) > 300


# ------------------------------------------------------------------- damage and races (index audit, 2026-12-06)
def _forge_manifest(dst: Path, keep_checksum: str | None = None) -> None:
    """Rewrite the manifest to match the files as they are now (as if a byte flipped where the open-time
    edge checksums do not look); ``keep_checksum``: that file keeps its old full checksum, which only
    ``verify`` compares."""
    from fastspec import _indexfmt as fmt

    m = fmt.read_manifest(dst)
    old = dict(m["files"])
    fmt.write_manifest(dst, m, {})  # every file described afresh
    if keep_checksum is not None:
        m = fmt.read_manifest(dst)
        m["files"][keep_checksum]["blake2b"] = old[keep_checksum]["blake2b"]
        fmt.write_manifest(dst, m, m["files"])


def test_damaged_faiss_ids_are_refused(subsets, tmp_path):
    """A FAISS index whose stored ids were damaged (past the open-time edge checksums) is refused when it is
    loaded, with the one-line error of other damaged arrays: an out-of-range id crashed the search (a raw
    IndexError) or, through the search's ID selector, silently dropped hits. One whose lists cannot be read
    at all (a damaged list size: std::bad_alloc) too."""
    import faiss

    from fastspec import vectors

    lib_sp, queries = subsets
    good = Library.build(lib_sp, tmp_path / "good.fastspec", preprocess=None,
                         faiss_params={"flat_below": 0, "nlist": 8, "theta_index": None})
    assert good.manifest["build"]["faiss"]["index"].startswith("IVF")
    want = good.search(queries[:5], k=3, mode="analog", engine="faiss")
    dst = _copy_index(good, tmp_path / "bad.fastspec")
    idx = faiss.read_index(str(dst / "faiss.index"))
    inv = faiss.extract_index_ivf(idx).invlists
    li = next(i for i in range(inv.nlist) if inv.list_size(i))
    faiss.rev_swig_ptr(inv.get_ids(li), inv.list_size(li))[0] = 10**12  # writable: the lists are in memory
    faiss.write_index(idx, str(dst / "faiss.index"))
    _forge_manifest(dst)
    with pytest.raises(IndexFormatError, match=r"corrupted: faiss.index holds ids outside \[0, 800\)"):
        Library.open(dst).search(queries[:5], k=3, mode="analog", engine="faiss")
    lib = Library.open(dst)
    real = faiss.read_index

    def broken(*a, **k):
        raise MemoryError("std::bad_alloc")

    vectors._faiss().read_index = broken
    try:
        with pytest.raises(IndexFormatError, match=r"corrupted: cannot read faiss.index \(std::bad_alloc\)"):
            lib.search(queries[:5], k=3, mode="analog", engine="faiss")
    finally:
        vectors._faiss().read_index = real
    np.testing.assert_array_equal(Library.open(good.path).search(queries[:5], k=3, mode="analog",
                                                                  engine="faiss").indices, want.indices)


def test_swapped_faiss_index_of_another_shape_is_refused(subsets, tmp_path):
    """A FAISS file of another dimension or metric under a re-signed manifest is refused when it is loaded,
    as damage: faiss's search failed with a bare AssertionError (another dimension), or ranked by L2
    distance (another metric). Exact search, which never reads it, still answers."""
    import faiss

    lib_sp, queries = subsets
    good = Library.build(lib_sp, tmp_path / "good.fastspec", preprocess=None, faiss=True)
    n, d = len(good), good.manifest["build"]["faiss"]["dim"]
    rng = np.random.default_rng(0)
    for name, index, why in [("dim", faiss.IndexFlatIP(d + 8), "has dimension 264, the manifest says 256"),
                             ("l2", faiss.IndexFlatL2(d), "does not rank by inner product")]:
        index.add(rng.random((n, index.d), dtype=np.float32))
        dst = _copy_index(good, tmp_path / f"{name}.fastspec")
        faiss.write_index(index, str(dst / "faiss.index"))
        _forge_manifest(dst)
        with pytest.raises(IndexFormatError, match=f"corrupted: faiss.index {why}"):
            Library.open(dst).search(queries[:3], k=3, mode="analog", engine="faiss")
        hits = Library.open(dst).search(queries[:3], k=3, mode="open")
        np.testing.assert_array_equal(hits.indices, good.search(queries[:3], k=3, mode="open").indices)


def test_append_refuses_damaged_old_spectra(raw_lib, subsets, tmp_path):
    """An append copies the old spectra into the rebuilt index, whose fresh checksums would vouch for
    them: a damaged peak file (full checksum wrong, edges right) stops it, and the index is unchanged."""
    dst = _copy_index(raw_lib, tmp_path / "lib.fastspec")
    mz = np.load(dst / "mz.npy")
    mz[mz.shape[0] // 2] = 5000.0
    np.save(dst / "mz.npy", mz)
    _forge_manifest(dst, keep_checksum="mz.npy")
    before = (dst / "manifest.json").read_bytes()
    lib = Library.open(dst)  # the cheap checks pass
    with pytest.raises(IndexFormatError, match="checksum mismatch in mz.npy"):
        lib.append(subsets[1][:5])
    assert (dst / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.fastspec"]


def test_manifest_count_must_match_the_arrays(raw_lib, tmp_path):
    from fastspec import _indexfmt as fmt

    dst = _copy_index(raw_lib, tmp_path / "lie.fastspec")
    m = fmt.read_manifest(dst)
    m["counts"]["n_spectra"] += 100
    m["counts"]["n_read"] += 100
    fmt.write_manifest(dst, m, m["files"])  # a consistent checksum: an edit, not damage
    with pytest.raises(IndexFormatError, match="inconsistent: 900 spectra, but peak offsets for 800"):
        Library.open(dst)


def test_open_while_another_process_swaps_the_index(raw_lib, subsets, tmp_path, monkeypatch):
    """Opening reads the manifest, then checks the files: when an append or rebuild elsewhere swaps the
    directory in between, the old manifest's sizes do not match the new files. That read is retried on
    the new index instead of calling a healthy index corrupted."""
    from fastspec import _indexfmt as fmt

    path = _copy_index(raw_lib, tmp_path / "lib.fastspec")
    newer = Library.build(subsets[0][:300], tmp_path / "newer.fastspec", preprocess=None, faiss=False)
    real, calls = fmt.check_files, []

    def swapped_meanwhile(directory, manifest):
        calls.append(manifest["counts"]["n_spectra"])
        if len(calls) == 1:  # another process's rebuild, between the manifest read and the file checks
            aside = tmp_path / ".lib.fastspec.old-0123456789ab"
            os.rename(path, aside)
            os.rename(newer.path, path)
            shutil.rmtree(aside)
        return real(directory, manifest)

    monkeypatch.setattr(fmt, "check_files", swapped_meanwhile)
    lib = Library.open(path)
    assert calls == [800, 300] and len(lib) == 300
    monkeypatch.setattr(fmt, "check_files", real)
    shutil.rmtree(path)  # no index and no swap beside it: refused at once, as before
    with pytest.raises(FileNotFoundError):
        Library.open(path)


def test_append_and_overwrite_through_a_symlink(raw_lib, subsets, tmp_path):
    """An index reached through a symlink (current -> v1) is appended to or rebuilt where it is: the link
    stays a link (it was replaced by the new directory, v1 left as it was)."""
    v1 = _copy_index(raw_lib, tmp_path / "v1.fastspec")
    link = tmp_path / "current.fastspec"
    link.symlink_to("v1.fastspec")
    Library.open(link).append(subsets[1][:5])
    assert link.is_symlink() and len(Library.open(v1)) == 805 and len(Library.open(link)) == 805
    Library.build(subsets[0][:100], link, preprocess=None, faiss=False, overwrite=True)
    assert link.is_symlink() and len(Library.open(v1)) == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current.fastspec", "v1.fastspec"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_close_releases_descriptors_and_the_library_stays_usable(raw_lib, subsets):
    """A searched library holds its mapped files open (29 descriptors after an analog search, an audit);
    close() or a with-block releases them now, and a later search maps them again."""
    import gc

    _, queries = subsets
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    gc.collect()
    n0 = fds()
    with Library.open(raw_lib.path) as lib:
        first = lib.search(queries[:5], k=5, mode="analog")
        assert fds() > n0
    del first  # hits keep their library (not its mappings)
    gc.collect()
    assert fds() == n0
    again = lib.search(queries[:5], k=5, mode="analog")
    assert again.indices.shape == (5, 5) and fds() > n0


def test_running_out_of_descriptors_is_not_called_corruption(raw_lib, monkeypatch):
    import errno

    from fastspec import _indexfmt

    def full(*a, **k):
        raise OSError(errno.EMFILE, "Too many open files")

    lib = Library.open(raw_lib.path)
    monkeypatch.setattr(_indexfmt.np, "load", full)
    with pytest.raises(FastspecError, match="Too many open files.*Library.close") as e:
        lib.array("mz")
    assert not isinstance(e.value, IndexFormatError)
    # the metadata's Parquet file too (pyarrow says it in words, without an errno)
    import pyarrow.parquet as pq

    def full_pq(*a, **k):
        raise OSError("Failed to open local file 'metadata.parquet'. Detail: [errno 24] Too many open files")

    monkeypatch.setattr(pq, "ParquetFile", full_pq)
    with pytest.raises(FastspecError, match="Too many open files") as e:
        Library.open(raw_lib.path).metadata(columns=["id"])
    assert not isinstance(e.value, IndexFormatError)


def _small(n: int = 30, seed: int = 0) -> Spectra:
    rng = np.random.default_rng(seed)
    mzs = [np.sort(rng.uniform(50, 400, 8)) for _ in range(n)]
    return Spectra.from_arrays(mzs, [rng.uniform(1, 100, 8) for _ in range(n)], precursor_mz=rng.uniform(420, 500, n))


def test_lifecycle_edges_from_an_audit(tmp_path, monkeypatch):
    """From an audit of the index lifecycle: an index named 238-255 bytes could be built but never
    overwritten or appended to (the old index moved aside under a name 18 bytes longer); ``-o .`` from
    inside an index rebuilt it, then failed (its temporary made inside itself, and "." re-read after the
    swap); an index made read-only was swapped for a writable one, its copy left behind for good."""
    from fastspec import _indexfmt

    long = tmp_path / ("w" * 240)
    Library.build(_small(), long, faiss=False)
    Library.build(_small(seed=1), long, faiss=False, overwrite=True)
    assert Library.open(long).append(_small(10, seed=2)).n_spectra == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == [long.name]

    lib = tmp_path / "lib.fastspec"
    Library.build(_small(), lib, faiss=False)
    monkeypatch.chdir(lib)
    here = Library.open(".").append(_small(10, seed=3))
    assert here.n_spectra == 40 and here.path == lib
    monkeypatch.chdir(lib)
    assert Library.build(_small(5), ".", faiss=False, overwrite=True).n_spectra == 5
    monkeypatch.chdir(tmp_path)
    assert Library.open(lib).n_spectra == 5 and sorted(p.name for p in tmp_path.iterdir()) == sorted([long.name, lib.name])

    monkeypatch.setattr(_indexfmt.os, "access", lambda *a, **k: False)  # as a user without write permission
    with pytest.raises(IndexFormatError, match="read-only"):
        Library.open(lib).append(_small(3))
    with pytest.raises(IndexFormatError, match="read-only"):
        Library.build(_small(3), lib, faiss=False, overwrite=True)
    monkeypatch.undo()
    assert Library.open(lib).n_spectra == 5


def test_a_faiss_write_failure_is_one_error(tmp_path, monkeypatch):
    """FAISS reports a full disk (or a file-size limit) as a RuntimeError quoting the temporary path: it
    is a FastspecError with the reason now, nothing left behind, the old index kept."""
    import faiss

    lib = tmp_path / "lib.fastspec"
    Library.build(_small(), lib, faiss=False)

    def full(index, path):
        raise RuntimeError(f"Error in void faiss::write_index: write error in {path}: 0 != 1 (File too large)")

    monkeypatch.setattr(faiss, "write_index", full)
    with pytest.raises(FastspecError, match="FAISS index faiss.index: File too large; is the disk full"):
        Library.build(_small(40, seed=4), lib, overwrite=True)
    assert Library.open(lib).n_spectra == 30 and [p.name for p in tmp_path.iterdir()] == ["lib.fastspec"]


@pytest.mark.parametrize("edit,words", [
    (lambda m: m.pop("build"), "'build' is missing"),
    (lambda m: m["build"].pop("preprocess"), "build['preprocess'] is missing"),
    (lambda m: m.update(counts=[]), "'counts' is missing or not an object"),
    (lambda m: m["counts"].update(n_positive=None), "counts['n_positive'] = None"),
    (lambda m: m["counts"].update(n_spectra="30"), "counts['n_spectra']"),
    (lambda m: m["files"].update({"../other/mz.npy": m["files"]["mz.npy"]}), "not a file of the index"),
    (lambda m: m["files"].pop("mz.npy"), "lists no mz.npy"),
    (lambda m: m["files"].pop("metadata.parquet"), "lists no metadata.parquet"),
    (lambda m: m["files"]["mz.npy"].pop("edge"), "lacks its size or checksums"),
    (lambda m: m["files"].update({"mz.npy": []}), "lacks its size or checksums"),
    (lambda m: m["files"]["mz.npy"].pop("shape"), "lacks its dtype or shape"),
])
def test_a_manifest_edited_with_its_checksum_is_refused_by_its_structure(tmp_path, edit, words):
    """From an audit: a manifest whose checksum was recomputed after an edit (or a format-2 one, which has
    none) with a key missing or of the wrong type gave tracebacks in info and query; one leaving out a
    file passed ``--verify``; a file named ``../other/mz.npy`` was read outside the index."""
    from fastspec import _indexfmt

    lib = tmp_path / "lib.fastspec"
    Library.build(_small(), lib, faiss=False)
    m = json.loads((lib / "manifest.json").read_text())
    m.pop(_indexfmt.MANIFEST_CHECKSUM)
    edit(m)
    m[_indexfmt.MANIFEST_CHECKSUM] = _indexfmt._manifest_digest(json.loads(json.dumps(m)))
    (lib / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="malformed: .*" + re.escape(words)):
        Library.open(lib)


def test_a_swap_between_check_and_load_says_rebuilt(tmp_path, monkeypatch):
    """From an audit: an append landing between a lazy load's "unchanged?" check and the file's mapping
    gave "dtype/shape ... manifest says ..." (reads as damage); it says the index was rebuilt now."""
    from fastspec import _indexfmt

    path = tmp_path / "lib.fastspec"
    Library.build(_small(), path, faiss=False)
    lib = Library.open(path)
    load = _indexfmt.load_array
    swapped = []

    def swapped_first(directory, name, entry):
        if not swapped:
            swapped.append(True)
            monkeypatch.setattr(_indexfmt, "load_array", load)
            Library.open(path).append(_small(10, seed=5))  # another writer, just now
        return load(directory, name, entry)

    monkeypatch.setattr(_indexfmt, "load_array", swapped_first)
    with pytest.raises(IndexFormatError, match="was rebuilt or appended to"):
        lib.array("wcos")


def test_a_list_of_spectra_with_something_else_names_that_element(tmp_path):
    """From an audit: ``search([spectrum, None])`` said "got Spectrum", naming the valid element."""
    import matchms

    lib = Library.build(_small(), tmp_path / "lib.fastspec", faiss=False)
    sp = matchms.Spectrum(mz=np.array([100.0, 150.0]), intensities=np.array([1.0, 2.0]),
                          metadata={"precursor_mz": 300.0})
    with pytest.raises(ParameterError, match="list of matchms spectra holds a NoneType at position 1"):
        lib.search([sp, None], k=1, mode="open")
    s = _small(3)
    with pytest.raises(ParameterError, match=r"list of spectra \(spectra\[i\]\) holds a str at position 2"):
        lib.search([s[0], s[1], "x.mgf"], k=1, mode="open")
    assert lib.search([sp], k=1, mode="open").indices.shape == (1, 1)


def test_review_fixes_paths_read_only_and_faiss_messages(tmp_path, monkeypatch):
    """From a review of the lifecycle fixes: paths were made absolute as text (``link/../lib`` named another
    directory than the OS does: a build replaced an unrelated index, an open failed on first use); the
    read-only check used os.access, which root passes whatever the mode bits; an index deleted under an open
    Library said "rebuilt"; FAISS's "could not open ...: reason" showed a wrong reason."""
    import faiss

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    Library.build(_small(5), tmp_path / "lib", faiss=False)  # the index "link/../lib" must not touch
    via = str(tmp_path / "link" / ".." / "lib")  # the OS reads it as real/lib
    built = Library.build(_small(2), via, faiss=False, overwrite=True)
    assert built.path == tmp_path / "real" / "lib" and Library.open(tmp_path / "lib").n_spectra == 5
    opened = Library.open(via)
    assert opened.n_spectra == 2 and opened.search(_small(1), k=1, mode="open").indices.shape == (1, 1)

    lib = tmp_path / "lib"
    mode = lib.stat().st_mode
    lib.chmod(mode & ~0o222)
    try:
        with pytest.raises(IndexFormatError, match="read-only"):
            Library.open(lib).append(_small(3))
    finally:
        lib.chmod(mode)
    gone = Library.open(lib)
    shutil.rmtree(lib)
    with pytest.raises(FileNotFoundError):
        gone.append(_small(3))

    def cannot_open(index, path):
        raise RuntimeError(f"Error in faiss::FileIOWriter::FileIOWriter(const char*) at io.cpp:103: Error: 'f' failed: "
                           f"could not open {path} (2024) for writing: No space left on device")

    monkeypatch.setattr(faiss, "write_index", cannot_open)
    with pytest.raises(FastspecError, match=r"faiss.index: No space left on device; is the disk full"):
        Library.build(_small(40), tmp_path / "f.fastspec")


def test_flags_rows_and_columns_are_checked(tmp_path, massbank_mgf):
    """A flag given as a string ("no" reads as True: it would replace an index), float or bool rows (0.7
    truncated to row 0), rows beyond the library (``input_file`` said None, "given in memory") and a column
    name given as a string (iterated per character) are refused or read as meant (a docs audit)."""
    from fastspec import io as fio
    from fastspec.io import ReadReport

    sp = fio.read(massbank_mgf)[:30]
    path = tmp_path / "l.fastspec"
    lib = Library.build(sp, path, faiss=False, progress=False)
    for kw in ({"overwrite": "no"}, {"overwrite": True, "faiss": "no"}, {"overwrite": True, "allow_empty": 1}):
        with pytest.raises(ParameterError, match="must be True or False"):
            Library.build(sp, path, progress=False, **kw)
    with pytest.raises(ParameterError, match="must be True or False"):
        lib.append(sp[:2], allow_empty="no", progress=False)
    assert Library.open(path).n_spectra == lib.n_spectra  # nothing replaced
    for call in (lambda r: lib.metadata(r, ["id"]), lib.input_file, lib.spectra, lib.peaks):
        for bad in (np.array([0.7]), np.array([True]), np.array([len(lib)]), np.array([-1])):
            with pytest.raises(ParameterError, match="integers|must be in"):
                call(bad)
    with pytest.raises(ParameterError, match="one-dimensional"):
        lib.metadata(np.array([[0, 1]]), ["id"])
    # whole numbers in other forms are rows: a pandas column turned float by missing values, Python objects
    want = lib.metadata([0, 2], ["id"])
    for rows in (np.array([0.0, 2.0]), np.array([0, 2], dtype=object), pa.array([0, 2]).to_numpy(zero_copy_only=False),
                 np.array([pa.scalar(0), pa.scalar(2)], dtype=object), np.array([0, 2.0], dtype=object)):
        assert lib.metadata(rows, ["id"]).equals(want)
    for bad in ([2 ** 70], np.array([2 ** 64], dtype=object), np.array([1e20]), [np.iinfo(np.uint64).max],
                [[0], [1, 2]], np.array([np.nan])):
        with pytest.raises(ParameterError):
            lib.metadata(bad, ["id"])
    assert lib.metadata([0, 1], "id").column_names == ["id"]
    assert lib.spectra([0], metadata="id").metadata.column_names == ["id"]
    assert lib.metadata(np.array([], np.int64), ["id"]).num_rows == 0 and lib.metadata(2, ["id"]).num_rows == 1
    # the report filled by a build names the file(s) and format read, as fastspec.io.read's does
    rep = ReadReport()
    Library.build(massbank_mgf, tmp_path / "m.fastspec", faiss=False, progress=False, report=rep)
    assert rep.path == str(massbank_mgf) and rep.format == "mgf"
