"""Splits: disjointness where promised, condition shifts, split files, l2s, and the split profile."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

pytest.importorskip("rdkit")

from fastspec.errors import FastspecError, ParameterError  # noqa: E402
from fastspec.spectra import Spectra  # noqa: E402

PROFILE_KEYS = {"n_train", "n_test", "n_excluded", "test_share", "n_test_molecules", "molecule_overlap",
                "molecule_overlap_spectra", "unseen_formula_share", "shift"}


@pytest.fixture(scope="module")
def lab(massbank_parquet):
    from fastspec.baseline import LabData

    t = pq.read_table(massbank_parquet)
    t = t.filter(pc.equal(t.column("ion_mode"), "positive"))
    rows = np.sort(np.random.default_rng(5).choice(t.num_rows, 1500, replace=False))
    t = t.take(pa.array(rows))
    sp = Spectra.from_arrays(
        t.column("mz").to_pylist(), t.column("intensity").to_pylist(), metadata=t.drop_columns(["mz", "intensity", "synonyms"])
    )
    return LabData.build(sp)


def _sides(split, values):
    tr = {values[i] for i in split.train}
    te = {values[i] for i in split.test}
    return tr, te


def test_random_split_share(lab):
    from fastspec.splits import make_split

    s = make_split(lab, "random", test_fraction=0.25, seed=1)
    assert len(s.test) == round(0.25 * len(lab))
    assert len(np.intersect1d(s.train, s.test)) == 0
    s2 = make_split(lab, "random", test_fraction=0.25, seed=1)
    np.testing.assert_array_equal(s.assignment, s2.assignment)


def test_inchikey_split_is_molecule_disjoint(lab):
    from fastspec.splits import make_split, split_profile

    s = make_split(lab, "inchikey", test_fraction=0.2, seed=2)
    tr, te = _sides(s, lab.mol)
    assert not (tr & te) and None not in te
    prof = split_profile(lab, s.assignment)
    assert set(prof) == PROFILE_KEYS
    assert prof["molecule_overlap"] == 0.0
    assert abs(prof["test_share"] - 0.2) < 0.03


def test_scaffold_split_is_scaffold_disjoint(lab):
    from fastspec.splits import make_split, molecule_scaffolds

    s = make_split(lab, "scaffold", test_fraction=0.2, seed=3)
    scaf = molecule_scaffolds(lab)
    tr, te = _sides(s, scaf)
    assert not ((tr & te) - {None})
    mtr, mte = _sides(s, lab.mol)
    assert not (mtr & mte)
    assert 0.1 < len(s.test) / (len(s.test) + len(s.train)) < 0.3


def test_scaffold_split_is_disjoint_over_every_records_smiles(lab):
    """No scaffold of any record's own SMILES on both sides (tautomeric SMILES of one molecule give two
    scaffolds; the groups join every molecule that shares either)."""
    from fastspec.splits import make_split, scaffolds

    for seed in (0, 3):
        s = make_split(lab, "scaffold", test_fraction=0.2, seed=seed)
        tr, te = _sides(s, scaffolds(list(lab.smiles)))
        assert not ((tr & te) - {None})


def test_scaffold_groups_join_tautomers():
    from types import SimpleNamespace

    from fastspec.splits import scaffold_groups

    # M: 4-hydroxypyridine and its pyridone tautomer; N shares only the pyridone ring; P neither
    lab = SimpleNamespace(mol=["M", "M", "N", "P", None, "Q"],
                          smiles=["Oc1ccncc1", "O=c1cc[nH]cc1", "Cc1c[nH]ccc1=O", "c1ccccc1", "c1ccccc1", "broken("])
    g = scaffold_groups(lab)
    # labelled by the group's smallest scaffold SMILES, whatever the row order
    assert g[0] == g[1] == g[2] == "O=c1cc[nH]cc1" and g[3] == "c1ccccc1" and g[4] is None and g[5] == "mol:Q"
    rev = SimpleNamespace(mol=lab.mol[::-1], smiles=lab.smiles[::-1])
    assert scaffold_groups(rev) == g[::-1]


def test_formula_split_leaves_no_same_formula_neighbour(lab):
    """Formula-disjoint: no test formula in train, spectra without a formula excluded, and so the
    formula-bucket baseline covers no test spectrum (its no_neighbour policy alone decides)."""
    from fastspec.evaluate import evaluate
    from fastspec.splits import EXCLUDED, make_split

    s = make_split(lab, "formula", test_fraction=0.2, seed=4)
    tr, te = _sides(s, lab.formula)
    assert not (tr & te) and None not in tr | te
    no_formula = np.array([f is None for f in lab.formula])
    assert (s.assignment[no_formula] == EXCLUDED).all()
    assert s.info["n_formulas"] == len(set(lab.formula) - {None})
    assert abs(len(s.test) / (len(s.test) + len(s.train)) - 0.2) < 0.03
    with pytest.raises(ParameterError, match="no argument"):
        make_split(lab, "formula:C6H6")
    r = evaluate(lab.spectra, "formula", metric="cosine", seed=4, no_neighbour="skip", n_bootstrap=10, fingerprint=None)
    assert r["n_test"] + sum(v for k, v in r["excluded"].items() if k.startswith("test_")) == len(s.test)
    assert r["coverage"] == 0.0 and r["n_scored"] == 0


def test_scaffolds_ignore_stereo_and_broken_smiles():
    """Stereoisomers' ring systems are one scaffold (else a scaffold-disjoint split could put
    adenosine-like nucleosides or steroid cores on both sides), and a molecule whose first SMILES does not
    parse takes its scaffold from the next one."""
    from types import SimpleNamespace

    from fastspec.splits import molecule_scaffolds, scaffolds

    a, b = scaffolds(["C[C@H]1CC[C@@H](C2CCCCC2)O1", "C[C@@H]1CC[C@H](C2CCCCC2)O1"])
    assert a == b == "C1CCC(C2CCCO2)CC1"
    lab = SimpleNamespace(mol=["M", "M", "N", None], smiles=["broken(", "c1ccccc1CC", None, "c1ccccc1"])
    assert molecule_scaffolds(lab) == ["c1ccccc1", "c1ccccc1", None, None]


def test_condition_splits(lab):
    from fastspec.splits import make_split, split_profile

    s = make_split(lab, "instrument:lc-esi-qtof")
    assert all(lab.instrument_type[i] == "LC-ESI-QTOF" for i in s.test)
    assert all(lab.instrument_type[i] != "LC-ESI-QTOF" for i in s.train)
    prof = split_profile(lab, s.assignment)
    sh = prof["shift"]["instrument_type"]
    assert sh["tvd"] == pytest.approx(1.0)  # disjoint supports
    assert sh["over_represented"][0]["value"] == "LC-ESI-QTOF" and sh["over_represented"][0]["test_share"] == 1.0

    a = make_split(lab, "adduct:[M+Na]+")
    assert {lab.adduct[i] for i in a.test} == {"[M+Na]+"}

    # normalized (NCE %) and absolute energies are binned and split apart: a third of MassBank gives NCE %
    norm = lab.ce_normalized
    assert 0.1 < norm.mean() < 0.9 and lab.counts["n_ce_normalized"] == int((norm & ~np.isnan(lab.ce)).sum())
    assert all(b.startswith("NCE ") == (n and not np.isnan(e)) for b, n, e in zip(lab.ce_bin, norm, lab.ce))
    in_range = (lab.ce >= 30) & (lab.ce <= 45)
    for arg, kind in (("ce:30-45", False), ("ce:30-45eV", False), ("ce:30-45%", True), ("ce:30%-45%", True),
                      ("ce:30-45nce", True)):
        c = make_split(lab, arg)
        assert (in_range[c.test] & (norm[c.test] == kind)).all()
        assert not (in_range[c.train] & (norm[c.train] == kind)).any() and c.params["energies"] == (
            "normalized" if kind else "absolute")
    with pytest.raises(ParameterError, match="mixes"):
        make_split(lab, "ce:30%-45eV")
    # a range no energy of the asked kind falls in names those of the other kind
    only_norm = lab.take(np.flatnonzero(norm))
    with pytest.raises(ParameterError, match=r"normalized energy in that range \(write ce:30-45%\)"):
        make_split(only_norm, "ce:30-45")

    d = make_split(lab, "instrument:LC-ESI-QTOF", molecule_disjoint=True)
    tr, te = _sides(d, lab.mol)
    assert not (tr & te)

    with pytest.raises(ParameterError):
        make_split(lab, "instrument:NO-SUCH-THING")
    with pytest.raises(ParameterError):
        make_split(lab, "ce:50-10")
    with pytest.raises(ParameterError):
        make_split(lab, "banana")


def test_column_and_file_splits(lab, tmp_path):
    from fastspec.splits import make_split, read_split, write_split

    s = make_split(lab, "inchikey", seed=4)
    for name in ("split.csv", "split.tsv", "split.parquet"):
        write_split(s, tmp_path / name, lab.spectra)
        back = make_split(lab, f"file:{tmp_path / name}")
        np.testing.assert_array_equal(back.assignment, s.assignment)
    # by id even if the file rows are shuffled; missing rows are excluded
    import pyarrow.csv as pcsv

    t = pcsv.read_csv(tmp_path / "split.csv")
    t = t.take(pa.array(np.random.default_rng(0).permutation(t.num_rows)[: t.num_rows - 5]))
    pcsv.write_csv(t, tmp_path / "part.csv")
    part = read_split(tmp_path / "part.csv", lab.spectra)
    assert (part == -1).sum() == 5 + (s.assignment == -1).sum()
    kept = part != -1
    np.testing.assert_array_equal(part[kept], s.assignment[kept])

    role = np.array(["excluded", "train", "test"])[s.assignment.astype(int) + 1].tolist()
    md = lab.spectra.metadata.append_column("role", pa.array(role))
    from fastspec.baseline import LabData

    lab2 = LabData.build(lab.spectra.with_metadata(md))
    col = make_split(lab2, "column:role")
    np.testing.assert_array_equal(col.assignment, s.assignment)
    with pytest.raises(ParameterError):
        make_split(lab, "column:nope")
    from fastspec.splits import column_assignment  # floats, as pandas writes ones and zeros with a gap

    assert column_assignment([1.0, 0.0, float("nan"), "1.0", "0.0", 0.5]).tolist() == [1, 0, -1, 1, 0, -1]
    with pytest.raises(FileNotFoundError):
        make_split(lab, f"file:{tmp_path / 'missing.csv'}")


def test_split_file_with_ids_repeated_across_polarities(tmp_path):
    """Ids that repeat in a split file (scan numbers of a positive and a negative run) cannot say which
    spectrum a row means: rows are matched by index, also where the ion-mode-filtered library's ids are
    unique (they used to be matched by id there, the file's last row winning: a molecule-disjoint split
    leaked in an audit's reproducer)."""
    from fastspec.baseline import LabData
    from fastspec.evaluate import _filter_mode
    from fastspec.splits import read_split

    sp = Spectra.from_arrays([[100.0, 150.0]] * 4, [[1.0, 2.0]] * 4, precursor_mz=[200.0] * 4,
                             metadata={"id": ["scan1", "scan2", "scan1", "scan2"],
                                       "ion_mode": ["positive", "positive", "negative", "negative"]})
    (tmp_path / "s.csv").write_text("index,id,split\n0,scan1,train\n1,scan2,test\n2,scan1,test\n3,scan2,train\n")
    pos = _filter_mode(LabData.build(sp), "positive")
    assert read_split(tmp_path / "s.csv", pos.spectra, pos.source_index).tolist() == [0, 1]  # train, test
    (tmp_path / "noindex.csv").write_text("id,split\nscan1,train\nscan1,test\n")
    with pytest.raises(FastspecError, match="ids repeat"):
        read_split(tmp_path / "noindex.csv", pos.spectra)
    # a library without ids (MGF without TITLE): positions, not the filtered set's numbering
    noid = Spectra.from_arrays([[100.0, 150.0]] * 4, [[1.0, 2.0]] * 4, precursor_mz=[200.0] * 4,
                               metadata={"ion_mode": ["negative", "positive", "negative", "positive"]})
    (tmp_path / "n.csv").write_text("index,id,split\n0,0,train\n1,1,test\n2,2,test\n3,3,train\n")
    pos = _filter_mode(LabData.build(noid), "positive")
    assert read_split(tmp_path / "n.csv", pos.spectra, pos.source_index).tolist() == [1, 0]
    # a row naming another spectrum than the one at its index: the library changed since
    (tmp_path / "moved.csv").write_text("index,id,split\n0,scan2,train\n1,scan1,test\n2,scan1,test\n3,scan2,train\n")
    with pytest.raises(FastspecError, match="another spectrum"):
        read_split(tmp_path / "moved.csv", sp)


def test_l2s_split(lab):
    from fastspec.baseline import SearchConfig
    from fastspec.splits import make_split, split_profile

    s = make_split(lab, "l2s", test_fraction=0.2, seed=0, search=SearchConfig(metric="cosine", tolerance=0.02),
                   l2s_options={"max_iter": 4, "patience": 2})
    tr, te = _sides(s, lab.mol)
    assert not (tr & te)
    prof = split_profile(lab, s.assignment)
    assert set(prof) == PROFILE_KEYS
    assert abs(prof["test_share"] - 0.2) < 0.02
    hist = s.info["history"]
    assert 1 <= len(hist) <= 4
    assert {"iteration", "test_share", "mean_tanimoto_all", "coverage"} <= set(hist[0])
    # the returned split is the hardest one seen
    assert s.info["best_mean_tanimoto_all"] == min(h["mean_tanimoto_all"] for h in hist)
    assert s.info["policy"] == "fallback" and hist[-1]["mean_tanimoto_all"] <= hist[0]["mean_tanimoto_all"] + 0.05
    # skip policy: uncovered test spectra count as 0, which pushes towards unseen formulas
    k = make_split(lab, "l2s", test_fraction=0.2, seed=0, search=SearchConfig(metric="cosine", tolerance=0.02),
                   l2s_options={"max_iter": 3, "patience": 1, "policy": "skip"})
    assert k.info["policy"] == "skip" and not (set(_sides(k, lab.mol)[0]) & set(_sides(k, lab.mol)[1]))
    assert split_profile(lab, k.assignment)["unseen_formula_share"] >= split_profile(lab, make_split(lab, "inchikey", seed=0).assignment)["unseen_formula_share"]
    with pytest.raises(ParameterError):
        make_split(lab, "l2s", l2s_options={"policy": "maybe"})


def test_l2s_progress_bar(lab, capsys):
    """learning-to-split's iterations search the whole test side (minutes on all of MassBank): a bar on
    stderr when asked (the CLI asks on a terminal, unless --quiet), the same split either way."""
    from fastspec.baseline import SearchConfig
    from fastspec.splits import make_split

    kw = dict(test_fraction=0.2, seed=0, search=SearchConfig(metric="cosine", tolerance=0.02))
    quiet = make_split(lab, "l2s", l2s_options={"max_iter": 2, "patience": 2}, **kw)
    assert capsys.readouterr().err == ""
    shown = make_split(lab, "l2s", l2s_options={"max_iter": 2, "patience": 2, "progress": True}, **kw)
    assert "l2s" in capsys.readouterr().err
    np.testing.assert_array_equal(quiet.assignment, shown.assignment)


def test_group_split_edge_cases():
    from fastspec.splits import group_split, random_split

    a = group_split(["a"] * 5 + ["b"] * 5 + [None] * 10, 0.5, seed=0)
    assert (a == 1).sum() == 10
    with pytest.raises(ParameterError):
        random_split(10, 1.5)
    # one giant group: still a non-empty test side (the smallest group)
    a = group_split(["x"] * 50 + ["y"] * 2, 0.2, seed=0)
    assert (a == 1).sum() == 2


def test_profile_by_hand():
    from fastspec.baseline import LabData
    from fastspec.splits import split_profile

    md = {
        "smiles": ["CCO", "CCO", "COC", "CCCO"],
        "formula": ["C2H6O", "C2H6O", "C2H6O", "C3H8O"],
        "ion_mode": ["positive"] * 4,
        "instrument_type": ["A", "A", "B", "B"],
        "adduct": ["[M+H]+"] * 4,
    }
    sp = Spectra.from_arrays([[1.0]] * 4, [[1.0]] * 4, precursor_mz=[50.0] * 4, metadata=md)
    lab = LabData.build(sp)
    p = split_profile(lab, np.array([0, 1, 1, 1], np.int8))
    assert p["n_train"] == 1 and p["n_test"] == 3
    assert p["molecule_overlap"] == pytest.approx(1 / 3)  # ethanol of {ethanol, DME, propanol}
    assert p["molecule_overlap_spectra"] == pytest.approx(1 / 3)
    assert p["unseen_formula_share"] == pytest.approx(1 / 3)  # propanol
    assert p["shift"]["instrument_type"]["tvd"] == pytest.approx(2 / 3)
    assert p["shift"]["instrument_type"]["over_represented"][0] == {"value": "B", "test_share": 0.6667, "train_share": 0.0}
    from fastspec.splits import make_split

    assert len(make_split(lab, "instrument:A").test) == 2
    with pytest.raises(FastspecError):
        make_split(lab, "column:formula")  # no train/test values -> empty sides


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from("abcdefghij")), min_size=2, max_size=60), st.floats(0.05, 0.95), st.integers(0, 10**6))
def test_group_split_never_splits_a_group(groups, frac, seed):
    from fastspec.splits import group_split

    a = group_split(groups, frac, seed)
    assert set(np.unique(a)) <= {0, 1}
    for g in set(groups) - {None}:
        sides = {int(a[i]) for i, x in enumerate(groups) if x == g}
        assert len(sides) == 1
    # never more test spectra than the target, except when one smallest group had to be taken
    target = round(frac * len(groups))
    assert (a == 1).sum() <= max(target, min(groups.count(g) if g is not None else 1 for g in groups))


def test_lab_modules_import_lightly():
    import subprocess
    import sys

    code = (
        "import sys, fastspec.evaluate, fastspec.ablation, fastspec.report, fastspec.splits, fastspec.fingerprints, "
        "fastspec.cli.lab_cmds; heavy = [m for m in ('rdkit', 'matplotlib', 'faiss', 'matchms') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from("abcdefghijklmnop"), min_size=2, max_size=60), st.floats(0.05, 0.95),
       st.integers(0, 10**6), st.randoms(use_true_random=False))
def test_group_split_does_not_depend_on_row_order(groups, frac, seed, rnd):
    """The same labelled spectra in another order (another file export) get the same split: a group's
    side depends on its label and the seed, not on where its first spectrum was read."""
    from fastspec.splits import group_split

    perm = list(range(len(groups)))
    rnd.shuffle(perm)
    a = group_split(groups, frac, seed)
    b = group_split([groups[i] for i in perm], frac, seed)
    side = {g: int(a[i]) for i, g in enumerate(groups)}
    assert all(int(b[j]) == side[groups[i]] for j, i in enumerate(perm))
