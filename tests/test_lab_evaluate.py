"""NN-baseline evaluation: hand-computed metrics, policies, stable keys, the khoo2026 preset against a
plain-numpy reimplementation, ablation rows == evaluate, predictions file, external queries."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

pytest.importorskip("rdkit")

from fastspec.errors import FastspecError, ParameterError  # noqa: E402
from fastspec.spectra import Spectra  # noqa: E402

FROZEN_REPORT_KEYS = (
    "n_test",
    "n_scored",
    "coverage",
    "mean_tanimoto",
    "mean_tanimoto_all",
    "exact_match_rate",
    "exact_match_rate_all",
    "hit_at_k",
    "hit_at_k_all",
    "oracle_tanimoto",
    "oracle_tanimoto_all",
    "leakage",
    "leakage_spectra",
    "n_fallback",
    "n_top1_tied",
    "n_zero_score",
    "excluded",
    "labels",
    "groups",
    "ci",
    "score_hist",
    "examples",
    "config",
    "split_profile",
    "timing",
)
FROZEN_PROFILE_KEYS = {
    "n_train",
    "n_test",
    "n_excluded",
    "test_share",
    "n_test_molecules",
    "molecule_overlap",
    "molecule_overlap_spectra",
    "unseen_formula_share",
    "shift",
}


def tanimoto(s1: str, s2: str, radius: int = 2, n_bits: int = 4096) -> float:
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    return DataStructs.TanimotoSimilarity(gen.GetFingerprint(Chem.MolFromSmiles(s1)), gen.GetFingerprint(Chem.MolFromSmiles(s2)))


# ---------------------------------------------------------------------- a tiny hand-made library
ETOH, DME, ACOH, PROPANOL = "CCO", "COC", "CC(=O)O", "CCCO"


def tiny() -> Spectra:
    rows = [
        # role, smiles, formula, mode, instrument, peaks
        ("train", ETOH, "C2H6O", "positive", "QTOF", [10.0, 20.0, 30.0]),
        ("train", DME, "C2H6O", "positive", "QTOF", [40.0, 50.0, 60.0]),
        ("train", ACOH, "C2H4O2", "positive", "QTOF", [15.0, 25.0]),
        ("test", ETOH, "C2H6O", "positive", "QTOF", [10.0, 20.0, 30.0]),  # right: ethanol
        ("test", DME, "C2H6O", "positive", "QTOF", [10.0, 20.0, 31.0]),  # wrong: looks like ethanol
        ("test", PROPANOL, "C3H8O", "positive", "ORBI", [15.0, 25.0]),  # no same-formula train spectrum
        ("test", ETOH, "C2H6O", "negative", "ORBI", [10.0, 20.0, 30.0]),  # no negative train spectrum
    ]
    md = {
        "id": [f"s{i}" for i in range(len(rows))],
        "role": [r[0] for r in rows],
        "smiles": [r[1] for r in rows],
        "formula": [r[2] for r in rows],
        "ion_mode": [r[3] for r in rows],
        "adduct": ["[M+H]+" if r[3] == "positive" else "[M-H]-" for r in rows],
        "instrument_type": [r[4] for r in rows],
        "collision_energy": ["20", "20", "20", "20", "50", "50", None],
    }
    return Spectra.from_arrays(
        [r[5] for r in rows], [[1.0] * len(r[5]) for r in rows], precursor_mz=[100.0] * len(rows), metadata=md
    )


def run(policy: str, **kw):
    from fastspec.evaluate import evaluate

    kw = {"metric": "cosine", "tolerance": 0.1, "n_bootstrap": 50, **kw}
    return evaluate(tiny(), "column:role", no_neighbour=policy, **kw)


def test_metrics_skip_policy_by_hand():
    t_eo = tanimoto(ETOH, DME)
    r = run("skip")
    assert tuple(r) == FROZEN_REPORT_KEYS
    assert r["n_test"] == 4 and r["n_scored"] == 2
    # how the labels were read: every formula was written, none derived; energies are absolute
    assert r["labels"] == {"library": {"n_spectra": 7, "n_no_molecule": 0, "n_molecule_from_smiles": 7,
                                       "n_smiles_from_inchi": 0, "n_no_formula": 0, "n_formula_from_smiles": 0, "n_formula_from_inchi": 0,
                                       "n_ce_normalized": 0, "n_zero_intensity_dropped": 0}}
    assert r["coverage"] == pytest.approx(0.5)
    assert r["mean_tanimoto"] == pytest.approx((1 + t_eo) / 2)
    assert r["mean_tanimoto_all"] == pytest.approx((1 + t_eo) / 4)
    assert r["exact_match_rate"] == pytest.approx(0.5)
    assert r["exact_match_rate_all"] == pytest.approx(0.25)
    assert r["hit_at_k"]["1"] == pytest.approx(0.5)
    assert r["oracle_tanimoto"] == pytest.approx(1.0)  # both covered spectra have their molecule in the bucket
    assert r["oracle_tanimoto_all"] == pytest.approx(0.5)
    assert r["leakage"] == pytest.approx(2 / 3)  # ethanol and DME of {ethanol, DME, propanol}
    assert r["leakage_spectra"] == pytest.approx(3 / 4)
    assert r["n_fallback"] == 0
    g = r["groups"]["instrument_type"]
    assert g["QTOF"]["n_test"] == 2 and g["QTOF"]["coverage"] == 1.0
    assert g["ORBI"]["n_scored"] == 0 and g["ORBI"]["mean_tanimoto"] is None and g["ORBI"]["mean_tanimoto_all"] == 0.0
    assert set(r["split_profile"]) >= FROZEN_PROFILE_KEYS
    assert r["split_profile"]["unseen_formula_share"] == pytest.approx(0.5)  # propanol, and ethanol in negative mode
    lo, hi = r["ci"]["mean_tanimoto_all"]
    assert lo <= r["mean_tanimoto_all"] <= hi


def test_metrics_zero_and_fallback_policies():
    t_eo = tanimoto(ETOH, DME)
    t_pa = tanimoto(PROPANOL, ACOH)
    z = run("zero")
    assert z["n_scored"] == 4
    assert z["mean_tanimoto"] == pytest.approx((1 + t_eo) / 4) == z["mean_tanimoto_all"]
    f = run("fallback")
    # propanol falls back to all positive training spectra (acetic acid has the same peaks);
    # the negative-mode spectrum has no training spectrum of its polarity and stays unscored
    assert f["n_fallback"] == 1 and f["n_scored"] == 3
    assert f["coverage"] == pytest.approx(0.5)
    assert f["mean_tanimoto"] == pytest.approx((1 + t_eo + t_pa) / 3)
    assert f["mean_tanimoto_all"] == pytest.approx((1 + t_eo + t_pa) / 4)
    # the oracle of the fallback spectrum is what its fallback search can reach: any positive training molecule
    # (was bucket-only, 0 here, below the fallback's own Tanimoto)
    best_p = max(tanimoto(PROPANOL, m) for m in (ETOH, DME, ACOH))
    assert f["oracle_tanimoto"] == pytest.approx((2 + best_p) / 3)
    assert f["oracle_tanimoto_all"] == pytest.approx((2 + best_p) / 4)
    assert f["oracle_tanimoto_all"] >= f["mean_tanimoto_all"]
    assert z["oracle_tanimoto_all"] == pytest.approx(0.5)  # zero: the bucket's reach, as under skip


def test_formula_adduct_bucket_and_bad_options():
    r = run("skip", bucket="formula+adduct")
    assert r["n_scored"] == 2
    with pytest.raises(ParameterError):
        run("skip", metric="nope")
    with pytest.raises(ParameterError):
        run("sometimes")
    from fastspec.evaluate import evaluate

    with pytest.raises(ParameterError):
        evaluate(tiny(), "column:role", preset="khoo2099")


def test_predictions_file_and_markdown(tmp_path):
    out = tmp_path / "p.parquet"
    md = tmp_path / "r.md"
    r = run("skip", predictions=out, markdown=md, output=tmp_path / "r.json")
    t = pq.read_table(out)
    assert t.num_rows == r["n_test"]
    assert t.column("exact").to_pylist() == [True, False, False, False]
    assert t.column("predicted_id").to_pylist() == ["s0", "s0", None, None]
    assert "mean_tanimoto_all" in md.read_text()
    import json

    assert tuple(json.loads((tmp_path / "r.json").read_text())) == FROZEN_REPORT_KEYS


def test_external_queries_leakage():
    from fastspec.evaluate import evaluate

    sp = tiny()
    role = np.array(sp.column("role"))
    lib, q = sp[role == "train"], sp[role == "test"]
    r = evaluate(lib, queries=q, metric="cosine", tolerance=0.1, n_bootstrap=0)
    assert r["n_test"] == 4 and r["n_scored"] == 2
    assert r["leakage"] == pytest.approx(2 / 3)
    assert r["ci"] == {}
    assert r["config"]["split"] == "queries"
    assert (r["labels"]["library"]["n_spectra"], r["labels"]["queries"]["n_spectra"]) == (3, 4)


def test_a_library_file_without_spectra_says_so(tmp_path):
    """A library file from which nothing could be read is named as such (it used to surface as an empty split)."""
    from fastspec.evaluate import evaluate

    (tmp_path / "none.json").write_text('[{"name": "x"}]')
    with pytest.raises(FastspecError, match=r"none.json: no spectra read \(1 records, 1 rejected; first: .*none.json: record 1: no peaks"):
        evaluate(str(tmp_path / "none.json"), metric="cosine", n_bootstrap=0)


def test_records_the_reader_rejects_are_counted(tmp_path):
    """Library records the reader rejects are counted with the exclusions and named on stderr (they vanished
    from evaluate's accounting, an audit found: 190 of 1,906)."""
    from fastspec.evaluate import evaluate
    from fastspec.io import write

    sp = tiny()
    write(sp, str(tmp_path / "lib.mgf"))
    text = (tmp_path / "lib.mgf").read_text()
    (tmp_path / "lib.mgf").write_text(text + "BEGIN IONS\nTITLE=bad\nPEPMASS=50\n10.0 -5\nEND IONS\n")
    logged = []
    r = evaluate(str(tmp_path / "lib.mgf"), "column:role", metric="cosine", tolerance=0.1, n_bootstrap=0,
                 log=logged.append)
    assert r["excluded"]["library_records_rejected"] == 1
    assert any("1 records rejected by the reader" in m for m in logged)
    from fastspec.ablation import ablate  # read once, counted in every split's rows

    out = ablate(str(tmp_path / "lib.mgf"), ["column:role", "column:role"], metric="cosine", tolerance=0.1,
                 intensity_powers=[1.0], mz_powers=[0.0], shuffle=False, n_bootstrap=0, fingerprint=None)
    assert [row["excluded"]["library_records_rejected"] for row in out["rows"]] == [1] * len(out["rows"])


def test_invalid_structures_are_counted():
    from fastspec.evaluate import evaluate
    from fastspec.fingerprints import molecule_keys

    sp = tiny()
    md = sp.metadata
    smiles = md.column("smiles").to_pylist()
    keys = molecule_keys(None, None, smiles)[0]
    keys[4] = "AAAAAAAAAAAAAA"
    smiles[4] = "definitely(not"  # a test spectrum whose truth cannot be fingerprinted
    smiles[1] = "also not smiles"  # a training spectrum (keeps its InChIKey)
    md = md.set_column(md.column_names.index("smiles"), "smiles", pa.array(smiles)).append_column("inchikey14", pa.array(keys))
    r = evaluate(sp.with_metadata(md), "column:role", metric="cosine", tolerance=0.1, n_bootstrap=0)
    assert r["excluded"] == {"test_no_molecule": 0, "test_invalid_structure": 1, "train_no_molecule": 0,
                             "train_invalid_structure": 1, "library_records_rejected": 0, "query_records_rejected": 0}
    assert r["n_test"] == 3
    # the training spectrum stays in training (a copy of it scores 0): the report does not call it left out
    from fastspec.report import _excluded, _setting

    assert _excluded(r).split(" / ")[1:] == ["1", "0"]
    assert "fp=" not in _setting(r)
    r0 = evaluate(sp.with_metadata(md), "column:role", metric="cosine", tolerance=0.1, n_bootstrap=0, fingerprint=None)
    assert _setting(r0).endswith(" fp=none")  # exact matches only: not the same measure
    # without any identity (no InChIKey, unparsable SMILES) a spectrum cannot be scored either
    md2 = sp.metadata.set_column(sp.metadata.column_names.index("smiles"), "smiles", pa.array(smiles))
    r2 = evaluate(sp.with_metadata(md2), "column:role", metric="cosine", tolerance=0.1, n_bootstrap=0)
    assert r2["excluded"]["test_no_molecule"] == 1 and r2["excluded"]["train_no_molecule"] == 1
    # the split's profile (shifts, overlaps, unseen formulas) is that of the spectra scored: it described the
    # split's sides, unscored spectra included (an audit: a CE shift quoted over 232 unscored test spectra)
    assert (r2["split_profile"]["n_test"], r2["split_profile"]["n_train"]) == (r2["n_test"], 2)
    assert r["split_profile"]["n_test"] == r["n_test"] == 3


# ---------------------------------------------------------------------- khoo2026 preset vs plain numpy
def _load_subset(path, n: int, seed: int = 0) -> Spectra:
    t = pq.read_table(path)
    t = t.filter(pc.equal(t.column("ion_mode"), "positive"))
    # whole formula groups so that most test spectra have candidates
    formulas = t.column("formula").to_pylist()
    uniq = sorted({f for f in formulas if f})
    rng = np.random.default_rng(seed)
    keep = set(rng.permutation(uniq)[: max(1, len(uniq) // 12)].tolist())
    rows = np.flatnonzero([f in keep for f in formulas])[:n]
    t = t.take(pa.array(rows))
    return Spectra.from_arrays(
        t.column("mz").to_pylist(), t.column("intensity").to_pylist(), metadata=t.drop_columns(["mz", "intensity", "synonyms"])
    )


@pytest.fixture(scope="module")
def massbank_small(massbank_parquet):
    return _load_subset(massbank_parquet, 1200)


def khoo_numpy(train: Spectra, test: Spectra, train_formula, test_formula):
    """Plain-numpy reimplementation of the paper's NN: dense 8000-bin vectors (0.25 Da to 2000 Da),
    base peak 100, summed per bin, 100 added at the precursor bin, cosine, same formula, top-1 with
    ties to the lowest library index. Returns the predicted training position per test spectrum (-1)."""

    def dense(sp: Spectra) -> np.ndarray:
        v = np.zeros((len(sp), 8000))
        for i in range(len(sp)):
            lo, hi = sp.offsets[i], sp.offsets[i + 1]
            mz, it = sp.mz[lo:hi], sp.intensity[lo:hi].astype(np.float64)
            if it.size and it.max() > 0:
                it = it / it.max() * 100.0
            b = np.floor(mz / 0.25).astype(np.int64)
            ok = (b >= 0) & (b < 8000)
            np.add.at(v[i], b[ok], it[ok])
            p = sp.precursor_mz[i]
            if np.isfinite(p) and 0 <= int(np.floor(p / 0.25)) < 8000:
                v[i, int(np.floor(p / 0.25))] += 100.0
        n = np.linalg.norm(v, axis=1, keepdims=True)
        return v / np.where(n == 0, 1.0, n)

    a, b = dense(test), dense(train)
    pred = np.full(len(test), -1, dtype=np.int64)
    score = np.zeros(len(test))
    for i in range(len(test)):
        cand = np.flatnonzero(np.array([f is not None and f == test_formula[i] for f in train_formula]))
        if cand.size == 0:
            continue
        s = b[cand] @ a[i]
        j = np.flatnonzero(s == s.max())[0]  # lowest index among ties
        pred[i], score[i] = cand[j], s[j]
    return pred, score


def test_khoo2026_preset_matches_numpy(massbank_small):
    from fastspec.baseline import LabData
    from fastspec.evaluate import Evaluation, search_config

    sp = massbank_small
    ev = Evaluation(sp, split="random", seed=3)
    cfg = search_config("khoo2026")
    rep, det = ev.run(cfg, n_bootstrap=0)
    lab: LabData = ev.lib
    train, test = ev.train_rows, det["test_rows"]
    pred, score = khoo_numpy(sp.take(train), sp.take(test), [lab.formula[i] for i in train], [lab.formula[i] for i in test])
    got = det["pred_rows"]
    exp = np.where(pred >= 0, train[np.maximum(pred, 0)], -1)
    np.testing.assert_allclose(det["score"][got >= 0], score[pred >= 0], atol=1e-6)
    # predictions agree except where two candidates tie within float rounding
    close_tie = np.zeros(len(test), bool)
    for i in np.flatnonzero(got != exp):
        close_tie[i] = abs(det["score"][i] - score[i]) < 1e-9
    assert ((got == exp) | close_tie).all()
    assert (got == exp).mean() > 0.98
    # Tanimoto of the numpy predictions (RDKit, Morgan r2 4096) vs the report. One structure per
    # molecule (InChIKey first block, first SMILES seen): tautomers share an InChIKey but not a SMILES.
    keys = sp.column("inchikey14")
    rep_smiles: dict = {}
    for k, s in zip(keys, sp.column("smiles")):
        rep_smiles.setdefault(k, s)
    t_ref = [
        0.0 if p < 0 else 1.0 if keys[q] == keys[p] else tanimoto(rep_smiles[keys[q]], rep_smiles[keys[p]])
        for q, p in zip(test.tolist(), exp.tolist())
    ]
    covered = pred >= 0
    assert rep["n_scored"] == int(covered.sum())
    assert rep["mean_tanimoto"] == pytest.approx(np.mean(np.asarray(t_ref)[covered]), abs=1e-9)
    assert rep["mean_tanimoto_all"] == pytest.approx(np.sum(t_ref) / len(test), abs=1e-9)
    assert rep["config"]["preset"] == "khoo2026" and rep["config"]["no_neighbour"] == "skip"


def test_ablation_rows_equal_evaluate(massbank_small):
    from fastspec.ablation import ablate
    from fastspec.evaluate import evaluate

    out = ablate(
        massbank_small, ["inchikey"], metric="cosine", tolerance=0.02, intensity_powers=[0.0, 1.0], mz_powers=[0.0],
        n_bootstrap=20, seed=1,
    )
    rows = out["rows"]
    assert [(r["intensity_power"], r["mz_power"], r["shuffle"]) for r in rows] == [(0.0, 0.0, False), (1.0, 0.0, False), (1.0, 0.0, True)]
    for r in (rows[0], rows[2]):
        rep = evaluate(
            massbank_small, "inchikey", metric="cosine", tolerance=0.02, intensity_power=r["intensity_power"],
            mz_power=r["mz_power"], shuffle_intensities=r["shuffle"], n_bootstrap=20, seed=1,
        )
        for k in FROZEN_REPORT_KEYS:
            if k != "timing":
                assert r[k] == rep[k], k
    blind = out["intensity_blind"][0]
    assert blind["split"] == "inchikey"
    assert blind["binary_wrong"] + blind["binary_right"] == blind["n_compared"]


def test_ablation_grid_without_mz_power_zero(massbank_small):
    """The binary-vs-intensity comparison runs its two settings at mz_power 0 even when the grid has no
    mz_power 0 (it raised KeyError)."""
    from fastspec.ablation import ablate

    out = ablate(massbank_small, ["random"], metric="cosine", intensity_powers=[0.5], mz_powers=[1.0], shuffle=False,
                 n_bootstrap=0)
    assert [(r["intensity_power"], r["mz_power"]) for r in out["rows"]] == [(0.5, 1.0), (0.0, 0.0), (1.0, 0.0)]
    assert out["intensity_blind"][0]["n_compared"] > 0
    # a single power would be dropped (the grid sets them): refused, as on the command line
    for kw in ({"intensity_power": 0.5}, {"mz_power": 3.0}):
        with pytest.raises(ParameterError, match="grid"):
            ablate(massbank_small, ["random"], metric="cosine", n_bootstrap=0, **kw)


def test_structures_given_only_as_inchi():
    """A record with an InChI but no SMILES (GNPS, MoNA exports) is fingerprinted and has its scaffold from
    the InChI; it was an invalid structure: excluded from test, scored 0 as a prediction, a scaffold group of
    its own (so a ring system sat on both sides of a scaffold split)."""
    from rdkit import Chem

    from fastspec.baseline import LabData
    from fastspec.evaluate import evaluate
    from fastspec.splits import scaffold_groups

    smis = ["Oc1ccccc1", "Nc1ccccc1", "Cc1ccccc1", "Clc1ccccc1", "CCCO"]
    recs = []
    for k, smi in enumerate(smis):
        m = Chem.MolFromSmiles(smi)
        for r in range(3):
            recs.append(dict(id=f"{k}_{r}", smiles=None if k == 0 else smi, inchi=Chem.MolToInchi(m),
                             inchikey=Chem.MolToInchiKey(m), ion_mode="positive", adduct="[M+H]+"))
    n = len(recs)
    sp = Spectra.from_arrays([np.array([50.0 + i % 7, 77.0]) for i in range(n)], [np.array([1.0, 2.0])] * n,
                             precursor_mz=[100.0] * n, metadata={k: [r[k] for r in recs] for k in recs[0]})
    lab = LabData.build(sp)
    assert lab.counts["n_smiles_from_inchi"] == 3 and Chem.CanonSmiles(lab.smiles[0]) == Chem.CanonSmiles("Oc1ccccc1")
    assert scaffold_groups(lab)[0] == scaffold_groups(lab)[3] == "c1ccccc1"
    r = evaluate(sp, "random", seed=0, n_bootstrap=0, test_fraction=0.4)
    assert not any("invalid_structure" in k and v for k, v in r["excluded"].items()), r["excluded"]


def test_lab_labels_nan_formula_and_unreadable_adduct():
    """'NaN' is a missing formula in the lab as in the library (it was N + Na); an adduct the table cannot
    read keeps its spelling (a formula+adduct bucket of its own) instead of none."""
    from fastspec.baseline import LabData

    sp = Spectra.from_arrays([np.array([50.0, 77.0])] * 2, [np.array([1.0, 2.0])] * 2, precursor_mz=[100.0] * 2,
                             metadata={"formula": ["NaN", "C6H6O"], "adduct": ["[M+Formate]-", "[M-H]-"],
                                       "ion_mode": ["negative"] * 2})
    lab = LabData.build(sp, derive_formula=False)
    assert lab.formula == [None, "C6H6O"]
    assert lab.adduct == ["[M+Formate]-", "[M-H]-"]
    # missing markers in a table's adduct column stay missing (not buckets named "N/A", "nan")
    marks = ["N/A", "nan", "unknown", " ", "[M+H]+", "M+Hx"]
    sp = Spectra.from_arrays([np.array([50.0])] * 6, [np.array([1.0])] * 6, precursor_mz=[100.0] * 6,
                             metadata={"adduct": marks, "ion_mode": ["positive"] * 6})
    assert LabData.build(sp, derive_formula=False).adduct == [None, None, None, None, "[M+H]+", "M+Hx"]


def test_results_say_what_a_rerun_needs(massbank_small, tmp_path):
    """The config holds the split's own parameters (l2s options were dropped), the fingerprint cache, the
    versions the numbers depend on, and test_fraction only for splits that draw their test set."""
    import json

    from fastspec.evaluate import evaluate

    r = evaluate(massbank_small, "l2s", preset="khoo2026", seed=7, n_bootstrap=0, fingerprint_cache=tmp_path / "fp",
                 l2s_options=dict(max_iter=2, patience=1, l2=5.0), output=tmp_path / "r.json")
    c = json.loads((tmp_path / "r.json").read_text())["config"]
    assert c["split_params"]["max_iter"] == 2 and c["split_params"]["patience"] == 1 and c["split_params"]["l2"] == 5.0
    assert c["fingerprint_cache"] == str(tmp_path / "fp") and c["test_fraction"] == r["config"]["test_fraction"] == 0.2
    assert c["versions"]["fastspec"] and c["versions"]["rdkit"] and c["versions"]["numpy"]
    given = evaluate(massbank_small, "adduct:[M+H]+", preset="khoo2026", n_bootstrap=0)
    assert given["config"]["test_fraction"] is None  # a given test set: no fraction was drawn


def test_report_of_ablation_with_another_reference_power(massbank_small):
    """A grid without intensity_power 1 (reference_power 0.5) still gets its summary and split profiles,
    and the intensity-blind text names the power compared (both were fixed at 1)."""
    import json

    from fastspec.ablation import ablate
    from fastspec.evaluate import _clean
    from fastspec.report import report_markdown

    out = ablate(massbank_small, ["inchikey"], preset="khoo2026", intensity_powers=(0.0, 0.5), mz_powers=(0.0,),
                 reference_power=0.5, shuffle=False, n_bootstrap=0)
    md = report_markdown([json.loads(json.dumps(_clean(out)))])
    assert "## Summary" in md and "intensity_power 0.5)" in md and "intensity_power 1)" not in md


def test_ablation_embeddings(massbank_small):
    from fastspec.ablation import ablate

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(massbank_small), 6))
    out = ablate(
        massbank_small, ["random"], metric="cosine", intensity_powers=[0.0, 1.0], mz_powers=[0.0], shuffle=False,
        embeddings=emb, embedding_threshold=-1.0, spectral_threshold=2.0, n_pairs=5, n_bootstrap=0,
    )
    e = out["embeddings"][0]
    assert e["n_flagged"] > 0 and len(e["pairs"]) == 5
    assert any(r.get("embedding") for r in out["rows"])
    # the embedding row's candidate pairs listed a run of test spectra at a time, as nn_search's: same row
    import fastspec.baseline as bl

    with pytest.MonkeyPatch.context() as m:
        m.setattr(bl, "PAIRS_PER_CHUNK", 7)
        small = ablate(
            massbank_small, ["random"], metric="cosine", intensity_powers=[0.0, 1.0], mz_powers=[0.0], shuffle=False,
            embeddings=emb, embedding_threshold=-1.0, spectral_threshold=2.0, n_pairs=5, n_bootstrap=0,
        )
    want, got = ([{k: v for k, v in r.items() if k != "timing"} for r in o["rows"] if r.get("embedding")] for o in (out, small))
    assert got == want
    with pytest.raises(FastspecError):
        ablate(massbank_small, ["random"], metric="cosine", intensity_powers=[1.0], mz_powers=[0.0], embeddings=emb[:10], n_bootstrap=0)
    # extra rows are refused too: they mean the rows belong to some other list of spectra
    extra = np.vstack([emb, emb[:1]])
    with pytest.raises(FastspecError, match=f"{len(emb) + 1} embedding rows for a library of {len(emb)} spectra"):
        ablate(massbank_small, ["random"], metric="cosine", intensity_powers=[0.0, 1.0], mz_powers=[0.0], embeddings=extra,
               n_bootstrap=0)
    # refused once the library is read, before the first grid cell is searched
    lines = []
    with pytest.raises(FastspecError, match="embedding rows"):
        ablate(massbank_small, ["random"], metric="cosine", intensity_powers=[0.0, 1.0], mz_powers=[0.0], embeddings=extra,
               n_bootstrap=0, log=lines.append)
    assert not any("intensity_power=" in line for line in lines), lines


def test_nn_search_in_bounded_runs_of_pairs(massbank_small, monkeypatch):
    """nn_search lists candidate pairs a run of queries at a time (the fallback's whole training side for every
    uncovered test spectrum asked for terabytes at 2.4M, an audit): tiny runs give the very same neighbours."""
    import fastspec.baseline as bl

    lab = bl.LabData.build(massbank_small)
    n = len(lab)
    test, train = np.arange(0, n, 3), np.setdiff1d(np.arange(n), np.arange(0, n, 3))
    for no_neighbour in ("skip", "fallback"):
        cfg = bl.SearchConfig(metric="cosine", tolerance=0.02, search_k=5, no_neighbour=no_neighbour)
        want = bl.nn_search(lab, lab, cfg, query_rows=test, library_rows=train, threads=1)
        with monkeypatch.context() as m:
            m.setattr(bl, "PAIRS_PER_CHUNK", 7)
            got = bl.nn_search(lab, lab, cfg, query_rows=test, library_rows=train, threads=1)
        for name in ("neighbours", "scores", "covered", "n_candidates", "fallback"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        assert (not want.covered.all()) and (no_neighbour == "skip" or want.fallback.any())


def test_embedding_topk_grouped_equals_candidate_lists():
    from fastspec.ablation import _load_embeddings, embedding_topk, embedding_topk_grouped
    from fastspec.similarity import group_candidates

    rng = np.random.default_rng(3)
    q, lib = _load_embeddings(rng.normal(size=(40, 5))), _load_embeddings(rng.normal(size=(300, 5)))
    qk, lk = rng.integers(-1, 3, 40), rng.integers(-1, 3, 300)
    lk[lk == 2] = 1  # key 2: queries without library rows
    offs, cand = group_candidates(qk, lk)
    want_s, want_i = embedding_topk(q, lib, offs, cand, 7)
    got_s, got_i = embedding_topk_grouped(q, qk, lib, lk, 7, block=9)
    assert np.array_equal(got_i, want_i)
    assert np.allclose(got_s, want_s, atol=1e-12)


def test_ablation_embeddings_with_fallback(massbank_small):
    """The embedding row answers uncovered test spectra as the spectral rows do under the fallback policy
    (it recorded 'fallback' but skipped them: a covered-only mean beside whole-test-set means)."""
    from fastspec.ablation import ablate

    emb = np.random.default_rng(0).normal(size=(len(massbank_small), 6))
    out = ablate(massbank_small, ["formula"], metric="cosine", intensity_powers=[1.0], mz_powers=[0.0], shuffle=False,
                 embeddings=emb, no_neighbour="fallback", n_bootstrap=0)
    spectral, embedded = [r for r in out["rows"] if not r.get("embedding")], [r for r in out["rows"] if r.get("embedding")]
    assert embedded and embedded[0]["n_fallback"] > 0
    for r in spectral:
        assert embedded[0]["n_scored"] == r["n_scored"] and embedded[0]["n_fallback"] == r["n_fallback"]
        assert embedded[0]["coverage"] == r["coverage"] == 0.0


def test_distinct_ranks_and_bootstrap():
    from fastspec.evaluate import bootstrap_ci, distinct_ranks

    codes = np.array([[5, 5, 3, 7, -1], [2, 2, 2, 2, 2], [-1, -1, -1, -1, -1]])
    r = distinct_ranks(codes, np.array([7, 2, 1]))
    assert r[0] == 2 and r[1] == 0 and r[2] > 10**6
    ci = bootstrap_ci(np.array([0, 0, 1, 2]), {"m": (np.array([1.0, 1.0, 0.0, 1.0]), np.ones(4))}, n_boot=200, seed=0)
    assert 0.0 <= ci["m"][0] <= 0.75 <= ci["m"][1] <= 1.0


def test_shuffle_intensities_stays_within_spectra():
    from fastspec.baseline import shuffle_intensities

    sp = tiny()
    rng = np.random.default_rng(0)
    sp = sp.with_peaks(sp.offsets, sp.mz, rng.random(sp.mz.shape[0]).astype(sp.intensity.dtype))
    a, b = shuffle_intensities(sp, 3), shuffle_intensities(sp, 3)
    np.testing.assert_array_equal(a.intensity, b.intensity)  # seeded
    np.testing.assert_array_equal(a.mz, sp.mz)
    for i in range(len(sp)):
        lo, hi = sp.offsets[i], sp.offsets[i + 1]
        assert sorted(a.intensity[lo:hi].tolist()) == sorted(sp.intensity[lo:hi].tolist())
    assert not np.array_equal(a.intensity, sp.intensity)


def test_preset_with_another_metric_drops_binning():
    from fastspec.evaluate import search_config

    cfg = search_config("khoo2026", metric="modified_cosine")
    assert cfg.metric == "modified_cosine" and cfg.metric_params == () and cfg.bucket == "formula"
    assert float(cfg.tolerance) == 0.01  # not the preset's 0.25 Da bin width
    assert search_config("khoo2026", intensity_power=0.5).metric_params == (("preset", "khoo2026"),)
    # nor its name: a modified-cosine run is not reported as a khoo2026 run
    assert cfg.preset is None and search_config("khoo2026", intensity_power=0.5).preset == "khoo2026"
    # an explicit tolerance is the preset's bin width (it was recorded, yet the 0.25 Da bins stayed), also with
    # the preset given as a base config (the Python API's search=)
    from fastspec.baseline import KHOO2026
    from fastspec.report import _setting

    cfg = search_config("khoo2026", tolerance="1")
    assert dict(cfg.metric_params) == {"preset": "khoo2026", "bin_width": 1.0} and cfg.preset == "khoo2026"
    assert search_config(base=KHOO2026, tolerance=5).metric_params == (("preset", "khoo2026"), ("bin_width", 5.0))
    assert _setting({"config": cfg.as_dict()}) == "khoo2026 bin_width=1 no_neighbour=skip"
    with pytest.raises(ParameterError, match="bin width"):
        search_config("khoo2026", tolerance="10ppm")


def test_external_queries_molecule_disjoint():
    """With --queries, molecule_disjoint leaves the library spectra of the queries' molecules out (the
    report said it was applied, but it was not: leakage stayed above 0)."""
    from fastspec.evaluate import evaluate

    sp = tiny()
    role = np.array(sp.column("role"))
    lib, q = sp[role == "train"], sp[role == "test"]
    r = evaluate(lib, queries=q, metric="cosine", tolerance=0.1, n_bootstrap=0, molecule_disjoint=True)
    assert r["leakage"] == 0 and r["config"]["molecule_disjoint"] is True
    assert r["split_profile"]["n_excluded"] > 0 and r["config"].get("test_fraction") is None


def test_report_setting_tells_policies_apart():
    """Skip, zero and fallback means are over different test spectra: the report's setting column must
    say which, skip included (all three read 'khoo2026' once, then skip alone did)."""
    from fastspec.evaluate import search_config
    from fastspec.report import _setting

    def rep(**kw):
        return {"config": {**search_config("khoo2026", **kw).as_dict(), "fingerprint": "morgan:2:4096"}}

    labels = [_setting(rep(no_neighbour=p)) for p in ("skip", "zero", "fallback")]
    # skip named too: a reader must not take skip's covered-only means for means over every test spectrum
    assert labels == ["khoo2026 no_neighbour=skip", "khoo2026 no_neighbour=zero", "khoo2026 no_neighbour=fallback"]
    assert _setting(rep(bucket="formula+adduct", vote=3)) == "khoo2026 no_neighbour=skip bucket=formula+adduct vote=3"
    assert _setting(rep(metric="modified_cosine")).startswith("modified_cosine ip=1")
    # runs that differ only in tolerance read alike (an audit: modified cosine at 0.01 and 0.05 Da)
    assert _setting(rep(metric="modified_cosine", tolerance=0.01)) != _setting(rep(metric="modified_cosine", tolerance=0.05))
    assert " tol=0.01da " in _setting(rep(metric="modified_cosine", tolerance=0.01))
    assert _setting(rep(metric="modified_cosine", tolerance="0.010")) == _setting(rep(metric="modified_cosine", tolerance=0.01))
    assert " tol=10.0ppm " in _setting(rep(metric="modified_cosine", tolerance="10 ppm"))
    r = rep()
    r["config"]["fingerprint"] = "morgan:3:2048"
    assert _setting(r) == "khoo2026 no_neighbour=skip fp=morgan:3:2048"
    assert _setting(rep(intensity_power=0.5)) == "khoo2026 ip=0.50 mz=0.00 no_neighbour=skip"


def test_report_labels_tell_runs_of_one_split_apart():
    """Runs of one split spec with another seed or molecule-disjointness are different splits: each gets its
    own label and split profile in the report (the second profile was dropped)."""
    from fastspec.report import _evaluations, _profiles

    def rep(**split):
        c = {"split": "scaffold", "seed": 0, "test_fraction": 0.2, "molecule_disjoint": False, "ion_mode": None, **split}
        return {"config": c, "split_profile": {"n_train": split.get("seed", 0) + 10}}

    docs = [rep(), rep(seed=1), rep(molecule_disjoint=True)]
    labels = [label for label, _ in _evaluations(docs)]
    assert labels == ["scaffold seed=0 molecule_disjoint=False", "scaffold seed=1 molecule_disjoint=False",
                      "scaffold seed=0 molecule_disjoint"]
    table = [b for b in _profiles(_evaluations(docs)) if b.kind == "table"][0]
    assert [row[0] for row in table.rows] == labels
    # choices all runs share are not repeated; other splits keep their plain names
    docs = [rep(ion_mode="positive"), rep(ion_mode="positive", seed=2), {"config": {"split": "random", "seed": 5}}]
    assert [label for label, _ in _evaluations(docs)] == ["scaffold seed=0", "scaffold seed=2", "random"]
    docs = [{"config": {"split": "queries", "queries": f"/data/{q}.mgf"}} for q in ("a", "b")]
    assert [label for label, _ in _evaluations(docs)] == ["queries queries=a.mgf", "queries queries=b.mgf"]



@pytest.mark.parametrize("text, want", [
    ("20", 20.0), ("35 eV", 35.0), ("NCE 30%", 30.0), ("20-40", 30.0), ("10 - 30 (nominal)", 20.0),
    ("160-0.41mz or 15 (mz>350)", None),  # a falling "ramp" is an m/z-dependent formula: no one energy
    ("scaled 80 (m/z=200) to 110 (m/z=120)", None), ("scaled by m/z", None),  # (MassBank's Eawag records)
    ("15, 30, 45, 60, 70 or 90 (nominal)", 51.666666666666664),  # merged from steps: their mean
    ("20, 40 or 60", 40.0), ("20,40 and 60 eV", 40.0),  # ("or N" rules out a decimal comma)
    ("ramp", None), (None, None),
    # ramps after a word or with units, as MSP / MGF / MassBank records write them (read as the low end before)
    ("Ramp 22.8-34.2 eV", 28.5), ("Ramp 20%-70% (nominal)", 45.0), ("10 eV - 30 eV", 20.0),
    ("NCE 30 (stepped 20-40)", 30.0), ("MS2-20 eV", 2.0),  # (no ramp glued to a word; the first number, as before)
    ("HCD 20-30-40", 30.0), ("stepped 15,30,45 NCE", 30.0), ("22,5 eV", 22.0),  # steps: their mean
])
def test_collision_energy_text(text, want):
    from fastspec.baseline import _parse_ce

    got = _parse_ce(text)
    assert (np.isnan(got) if want is None else got == want)


def test_normalized_collision_energies_binned_apart():
    """NCE % (MassBank's "30 % (nominal)", "NCE 35") is not an energy in eV: its bins are its own, from the
    text or from a ``ce_unit`` column; an unknown energy is "unknown" either way."""
    from fastspec.baseline import LabData

    texts = ["30 % (nominal)", "35 (nominal)", "NCE 35", "30 eV", "30", "45V", None, "normalized 50",
             "NCE35", "10 eV, 5% offset", "nominal mass 35 eV", "abnormalised 30"]
    sp = Spectra.from_arrays([[100.0]] * 12, [[1.0]] * 12, metadata={"collision_energy": texts})
    lab = LabData.build(sp)
    assert lab.ce_bin == ["NCE 20-40", "NCE 20-40", "NCE 20-40", "20-40", "20-40", "40-60", "unknown", "NCE 40-60",
                          "NCE 20-40", "<20", "20-40", "20-40"]
    assert lab.counts["n_ce_normalized"] == 5 and lab.take(np.array([2, 3])).ce_normalized.tolist() == [True, False]
    unit = Spectra.from_arrays([[100.0]] * 3, [[1.0]] * 3,
                               metadata={"ce_min": [30.0, 30.0, None], "ce_max": [40.0, 40.0, None],
                                         "ce_unit": ["%", "eV", "%"]})
    assert LabData.build(unit).ce_bin == ["NCE 20-40", "20-40", "unknown"]


def test_zero_intensity_peaks_are_not_fragments_in_the_lab():
    """Readers keep zero-intensity peaks (matchms does); the lab drops and counts them, so that binary
    peaks (``intensity_power=0``) do not make fragments of them: here they would make the dimethyl ether
    training spectrum the best match of the dimethyl ether query (0.71 against ethanol's 0.67)."""
    from fastspec.baseline import LabData
    from fastspec.evaluate import evaluate
    from fastspec.report import _labels_note

    sp = tiny()
    mz = [sp[i].mz for i in range(len(sp))]
    inten = [sp[i].intensity for i in range(len(sp))]
    mz[1] = np.array([10.0, 20.0, 31.0, 40.0, 50.0, 60.0])
    inten[1] = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], np.float32)
    zeros = Spectra.from_arrays(mz, inten, precursor_mz=sp.precursor_mz, metadata=sp.metadata)
    assert LabData.build(zeros).counts["n_zero_intensity_dropped"] == 3
    assert len(LabData.build(zeros).spectra.mz) == len(sp.mz)
    for power in (0.0, 1.0):
        a = evaluate(zeros, "column:role", no_neighbour="skip", metric="cosine", tolerance=0.1, intensity_power=power,
                     n_bootstrap=10)
        b = evaluate(sp, "column:role", no_neighbour="skip", metric="cosine", tolerance=0.1, intensity_power=power,
                     n_bootstrap=10)
        assert a["labels"]["library"]["n_zero_intensity_dropped"] == 3
        assert "3 zero-intensity peaks dropped" in str(_labels_note([("x", a)])[0])
        for key in ("n_scored", "mean_tanimoto", "exact_match_rate"):
            assert a[key] == b[key], key


def test_peak_weight_powers_accept_numpy_numbers():
    """A numpy float32 power (np.float32 is no Python float) is a power like any other, stored as a float so
    that the report stays JSON; booleans, negative and non-finite powers are refused."""
    import json

    from fastspec.evaluate import evaluate

    r = evaluate(tiny(), "column:role", metric="cosine", tolerance=0.1, intensity_power=np.float32(0.5), n_bootstrap=5)
    ref = evaluate(tiny(), "column:role", metric="cosine", tolerance=0.1, intensity_power=0.5, n_bootstrap=5)
    assert r["config"]["intensity_power"] == 0.5 and r["mean_tanimoto"] == ref["mean_tanimoto"]
    json.dumps(r["config"])
    for bad in (True, -1.0, float("inf"), "0.5"):
        with pytest.raises(ParameterError, match="intensity_power must be a finite number"):
            evaluate(tiny(), "column:role", metric="cosine", tolerance=0.1, intensity_power=bad, n_bootstrap=5)


def test_top1_ties_between_molecules_are_counted():
    """Two training molecules of one formula with the same spectrum: the test spectrum's prediction is the
    lowest library row, so row order decides it; the report counts such spectra (an audit: 22 of 282 covered
    test spectra changed molecule when the rows were reversed)."""
    from fastspec.evaluate import evaluate

    def lab(order):
        rows = [("train", ETOH, [10.0, 20.0, 30.0]), ("train", DME, [10.0, 20.0, 30.0]),
                ("test", ETOH, [10.0, 20.0, 30.0]), ("test", ACOH, [15.0, 25.0]), ("train", ACOH, [15.0, 25.0])]
        rows = [rows[i] for i in order]
        md = {"role": [r[0] for r in rows], "smiles": [r[1] for r in rows],
              "formula": [{ETOH: "C2H6O", DME: "C2H6O", ACOH: "C2H4O2"}[r[1]] for r in rows],
              "ion_mode": ["positive"] * len(rows)}
        return Spectra.from_arrays([r[2] for r in rows], [[1.0] * len(r[2]) for r in rows],
                                   precursor_mz=[100.0] * len(rows), metadata=md)

    a = evaluate(lab([0, 1, 2, 3, 4]), "column:role", metric="cosine", tolerance=0.1, n_bootstrap=0)
    b = evaluate(lab([1, 0, 2, 3, 4]), "column:role", metric="cosine", tolerance=0.1, n_bootstrap=0)
    assert a["n_top1_tied"] == b["n_top1_tied"] == 1  # ethanol's test spectrum; acetic acid has one molecule
    assert a["exact_match_rate"] == 1.0 and b["exact_match_rate"] == 0.5  # the row order decided


def test_predictions_without_a_matched_peak_are_counted():
    """The NN copies the molecule of its best same-formula neighbour even when no peak matched (score 0): the
    bucket and the row order chose it, not the spectrum. Reports count such predictions and the exact ones
    among them (an audit: 19 of 169 exact matches on a MassBank subset came from the bucket alone)."""
    from fastspec.evaluate import evaluate

    rows = [("train", ETOH, [10.0, 20.0, 30.0]), ("test", ETOH, [40.0, 50.0]), ("test", DME, [60.0, 70.0]),
            ("train", ACOH, [15.0, 25.0]), ("test", ACOH, [15.0, 25.0])]
    md = {"role": [r[0] for r in rows], "smiles": [r[1] for r in rows],
          "formula": [{ETOH: "C2H6O", DME: "C2H6O", ACOH: "C2H4O2"}[r[1]] for r in rows],
          "ion_mode": ["positive"] * len(rows)}
    lab = Spectra.from_arrays([r[2] for r in rows], [[1.0] * len(r[2]) for r in rows],
                              precursor_mz=[100.0] * len(rows), metadata=md)
    r = evaluate(lab, "column:role", metric="cosine", tolerance=0.1, n_bootstrap=0)
    assert r["n_scored"] == 3 and r["exact_match_rate"] == pytest.approx(2 / 3)
    assert r["n_zero_score"] == {"predicted": 2, "exact": 1}  # ethanol by its bucket, dimethyl ether wrongly


def test_hit_ks_and_bootstrap_are_checked(massbank_small):
    """hit@0 (always 0) and a negative number of bootstrap draws (empty intervals) were accepted."""
    from fastspec.evaluate import evaluate

    for kw in ({"hit_ks": (0,)}, {"hit_ks": ()}, {"hit_ks": (1, 2.5)}, {"n_bootstrap": -1}, {"n_bootstrap": True}):
        with pytest.raises(ParameterError):
            evaluate(massbank_small, "random", threads=1, **kw)
    rep = evaluate(massbank_small, "random", threads=1, hit_ks=[1, 3], n_bootstrap=0)
    assert set(rep["hit_at_k"]) == {"1", "3"} and rep["ci"] == {}
