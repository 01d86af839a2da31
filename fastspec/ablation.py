"""Intensity ablation of the NN baseline: does the baseline use intensities at all?

:func:`ablate` evaluates every split over a grid of peak weights — ``intensity_power`` 0 ("binary": every
peak weighs the same; in the khoo2026 binned vectors a bin then holds its number of peaks, not 0/1),
0.25, 0.5, 1, 2 × ``mz_power`` 0, 1 — plus an intensity-shuffle control (intensities permuted within
each spectrum, seeded). Each row is exactly the report :func:`fastspec.evaluate.evaluate` gives with
the same settings (labels, fingerprints and split are computed once per split and shared).

Two analyses:

``intensity_blind``
    per split, the top-1 prediction under binary peaks vs under intensity-aware peaks
    (``intensity_power`` 1): the share of wrong binary predictions that intensity fixes, and the
    converse (right binary predictions that intensity breaks); and, for splits without exact hits, how
    often the intensity-aware top-1 has a higher / lower Tanimoto than the binary one.
``embeddings``
    with an external embedding matrix (one row per spectrum), the NN baseline with the cosine
    similarity of embeddings (same buckets), and the test/neighbour pairs whose embedding similarity
    is high while the intensity-aware spectral similarity is low.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fastspec.baseline import LabData, NNResult, SearchConfig, bucket_keys, factorize
from fastspec.errors import FastspecError, ParameterError
from fastspec.evaluate import HIT_KS, Evaluation, search_config, write_json

INTENSITY_POWERS = (0.0, 0.25, 0.5, 1.0, 2.0)
MZ_POWERS = (0.0, 1.0)


def ablate(
    library,
    splits: Sequence[str] = ("random",),
    *,
    queries=None,
    preset: str | None = None,
    search: SearchConfig | None = None,
    intensity_powers: Sequence[float] = INTENSITY_POWERS,
    mz_powers: Sequence[float] = MZ_POWERS,
    shuffle: bool = True,
    shuffle_seed: int = 0,
    reference_power: float = 1.0,
    embeddings: "str | Path | np.ndarray | None" = None,
    query_embeddings: "str | Path | np.ndarray | None" = None,
    embedding_threshold: float = 0.8,
    spectral_threshold: float = 0.5,
    n_pairs: int = 20,
    test_fraction: float = 0.2,
    seed: int = 0,
    molecule_disjoint: bool = False,
    ion_mode: str | None = None,
    fingerprint: str | None = "morgan:2:4096",
    fingerprint_cache=None,
    l2s_options: dict | None = None,
    hit_ks: Sequence[int] = HIT_KS,
    n_bootstrap: int = 1000,
    output: str | Path | None = None,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
    **search_options,
) -> dict:
    """Run the intensity grid for every split (or for ``queries``).

    Parameters
    ----------
    splits : sequence of str
        Split specs (ignored with ``queries``).
    preset, search, **search_options
        Base search configuration (as for :func:`fastspec.evaluate.evaluate`); the grid overrides
        ``intensity_power``, ``mz_power`` and ``shuffle_intensities``.
    reference_power : float
        The intensity-aware setting compared with binary peaks in ``intensity_blind``.
    embeddings, query_embeddings : path to .npy or ndarray (n, d), optional
        One row per spectrum of the library (and of ``queries``), in file order.

    Returns
    -------
    dict
        ``{"rows": [...], "intensity_blind": [...], "embeddings": [...], "config": {...}}``; each row has
        ``split``, ``intensity_power``, ``mz_power``, ``shuffle`` plus every report key.
    """
    log = log or (lambda msg: None)
    for name in ("intensity_power", "mz_power", "shuffle_intensities"):  # the grid sets them: a value would be dropped
        if search_options.get(name) is not None:
            raise ParameterError(f"{name} does not apply to ablate: the grid sets it (intensity_powers, mz_powers, shuffle)")
    base = search_config(preset, search, **search_options)
    settings = [(float(ip), float(mp), False) for mp in mz_powers for ip in intensity_powers]
    if shuffle:
        settings.append((float(reference_power), 0.0, True))
    # intensity_blind compares binary and reference-power peaks at mz_power 0, whatever the grid holds
    settings += [(p, 0.0, False) for p in dict.fromkeys((0.0, float(reference_power))) if (p, 0.0, False) not in settings]
    if queries is None:  # every spec before the first grid runs (a typo in the last came after the others)
        from fastspec.splits import check_split_spec

        for spec in splits:
            check_split_spec(spec)
    emb_lib = _load_embeddings(embeddings)
    emb_q = _load_embeddings(query_embeddings)
    if queries is not None and emb_lib is not None and emb_q is None:
        raise ParameterError("with queries, embeddings need --query-embeddings as well")
    rows: list[dict] = []
    blind: list[dict] = []
    emb_out: list[dict] = []
    given = str(library) if isinstance(library, (str, Path)) else None  # recorded in every row's config
    unreadable = None  # the files' rejected records, counted when the first split read them
    for spec in ([None] if queries is not None else list(splits)):
        name = "queries" if spec is None else spec
        log(f"[{name}] preparing labels, fingerprints and split")
        ev = Evaluation(
            library,
            queries=queries,
            split=spec or "random",
            test_fraction=test_fraction,
            seed=seed,
            molecule_disjoint=molecule_disjoint,
            ion_mode=ion_mode,
            fingerprint=fingerprint,
            fingerprint_cache=fingerprint_cache,
            l2s_options=l2s_options,
            search=base,
            threads=threads,
            log=log,
        )
        if given is not None:
            ev.split_args["library"] = given
        if unreadable is None:
            unreadable = dict(ev.unreadable)
        else:  # read once: every split's rows report the same rejected records
            ev.unreadable = dict(unreadable)
            ev.excluded.update(unreadable)
        if emb_lib is not None and not emb_out:  # row counts need the library read: check before the first grid
            _embedding_rows(ev, emb_lib, ev.lib, "embeddings")
            if ev.qlab is not ev.lib:
                _embedding_rows(ev, emb_q, ev.qlab, "query embeddings")
        library = ev.lib  # labels and fingerprints are reused by the next split
        if queries is not None:
            queries = ev.qlab
        details = {}
        for ip, mp, sh in settings:
            cfg = base.replace(intensity_power=ip, mz_power=mp, shuffle_intensities=sh, shuffle_seed=shuffle_seed if sh else base.shuffle_seed)
            rep, det = ev.run(cfg, hit_ks=hit_ks, n_bootstrap=n_bootstrap, ci_seed=seed)
            details[(ip, mp, sh)] = det
            rows.append({"split": name, "intensity_power": ip, "mz_power": mp, "shuffle": sh, **rep})
            log(
                f"[{name}] intensity_power={ip:g} mz_power={mp:g}{' shuffled' if sh else ''}: "
                f"mean_tanimoto={_fmt(rep['mean_tanimoto'])} all={_fmt(rep['mean_tanimoto_all'])}"
            )
        blind.append({"split": name, **intensity_blind(details[(0.0, 0.0, False)], details[(float(reference_power), 0.0, False)])})
        if emb_lib is not None:
            ref_cfg = base.replace(intensity_power=float(reference_power), mz_power=0.0, shuffle_intensities=False)
            emb_out.append(
                {
                    "split": name,
                    **embedding_analysis(
                        ev, emb_lib, emb_q, ref_cfg, embedding_threshold, spectral_threshold, n_pairs, hit_ks, n_bootstrap, seed, rows, name
                    ),
                }
            )
    out = {
        "rows": rows,
        "intensity_blind": blind,
        "embeddings": emb_out,
        "config": {
            **base.as_dict(),
            "splits": list(splits) if queries is None else ["queries"],
            "intensity_powers": [float(x) for x in intensity_powers],
            "mz_powers": [float(x) for x in mz_powers],
            "shuffle": shuffle,
            "shuffle_seed": shuffle_seed,
            "reference_power": float(reference_power),
        },
    }
    if output is not None:
        write_json(out, output)
    return out


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def intensity_blind(binary: dict, aware: dict) -> dict:
    """Compare per-test top-1 predictions under binary and intensity-aware peaks.

    Only test spectra predicted under both settings count. ``fixed_share``: wrong under binary, right
    with intensities, over the binary-wrong ones; ``broken_share``: the converse over the binary-right.
    """
    both = (binary["pred_rows"] >= 0) & (aware["pred_rows"] >= 0)
    eb, ea = binary["exact"][both], aware["exact"][both]
    wrong_b, right_b = ~eb, eb
    fixed = int((wrong_b & ea).sum())
    broken = int((right_b & ~ea).sum())
    changed = (binary["pred_rows"][both] != aware["pred_rows"][both]).mean() if both.any() else 0.0
    dt = aware["tanimoto"][both] - binary["tanimoto"][both]
    # molecule-disjoint splits have no exact hits to fix or break: compare the Tanimoto of the two top-1s
    better, worse = int((dt > 1e-12).sum()), int((dt < -1e-12).sum())
    return {
        "n_compared": int(both.sum()),
        "binary_wrong": int(wrong_b.sum()),
        "fixed_by_intensity": fixed,
        "fixed_share": fixed / int(wrong_b.sum()) if wrong_b.any() else None,
        "binary_right": int(right_b.sum()),
        "broken_by_intensity": broken,
        "broken_share": broken / int(right_b.sum()) if right_b.any() else None,
        "changed_share": float(changed),
        "mean_tanimoto_gain": float(dt.mean()) if dt.size else None,
        "tanimoto_improved": better,
        "tanimoto_worsened": worse,
        "tanimoto_improved_share": better / int(both.sum()) if both.any() else None,
        "tanimoto_worsened_share": worse / int(both.sum()) if both.any() else None,
    }


# ====================================================================== embeddings
def _load_embeddings(x) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        arr = x
    else:
        p = Path(x)
        if not p.exists():
            raise FileNotFoundError(2, "No such file or directory", str(p))
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise FastspecError(f"{p}: not a plain numeric .npy array ({e})") from e
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise FastspecError(f"embeddings must be a 2-D numeric array (one row per spectrum), got {arr.dtype} {arr.shape}")
    arr = np.asarray(arr, dtype=np.float64)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:  # NaN rows scored as similar as any (all-NaN embeddings gave a mean Tanimoto of 0.885)
        raise FastspecError(f"embeddings hold {bad} non-finite values (NaN or inf)")
    norm = np.linalg.norm(arr, axis=1, keepdims=True)
    norm[norm == 0] = 1.0
    return arr / norm


def embedding_topk(
    q_emb: np.ndarray, l_emb: np.ndarray, offsets: np.ndarray, cand: np.ndarray, k: int, chunk: int = 2_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k library rows by embedding cosine within CSR candidate lists (ties to the lowest row).

    Parameters
    ----------
    q_emb : ndarray (nq, d), l_emb : ndarray (nl, d)
        Unit-normalised embeddings (query rows aligned with ``offsets``).
    offsets, cand : CSR candidate lists, as from ``fastspec.similarity.group_candidates``.

    Returns
    -------
    scores (nq, k) float64, indices (nq, k) int64 (-1 none)
    """
    nq = offsets.shape[0] - 1
    lens = np.diff(offsets)
    owner = np.repeat(np.arange(nq), lens)
    sims = np.empty(cand.shape[0])
    for s in range(0, cand.shape[0], chunk):
        e = min(s + chunk, cand.shape[0])
        sims[s:e] = np.einsum("ij,ij->i", q_emb[owner[s:e]], l_emb[cand[s:e]])
    order = np.lexsort((cand, -sims, owner))  # per query: best first, ties to the lowest row
    # owner is non-decreasing, so sorted position p belongs to query owner[p]: its rank is p - start
    rank_sorted = np.empty(cand.shape[0], dtype=np.int64)
    rank_sorted[order] = np.arange(cand.shape[0]) - np.repeat(offsets[:-1], lens)
    scores = np.zeros((nq, k))
    idx = np.full((nq, k), -1, dtype=np.int64)
    keep = rank_sorted < k
    scores[owner[keep], rank_sorted[keep]] = sims[keep]
    idx[owner[keep], rank_sorted[keep]] = cand[keep]
    return scores, idx


def embedding_topk_grouped(
    q_emb: np.ndarray, q_keys: np.ndarray, l_emb: np.ndarray, l_keys: np.ndarray, k: int, block: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k library rows by embedding cosine among all library rows with the query's key (ties to the lowest
    row), as :func:`embedding_topk` over :func:`fastspec.similarity.group_candidates`' lists, but by blocks
    of dense products: a polarity-wide group (the fallback) would be millions of candidate pairs.

    Parameters
    ----------
    q_emb : ndarray (nq, d), l_emb : ndarray (nl, d)
        Unit-normalised embeddings.
    q_keys : ndarray, int (nq,), l_keys : ndarray, int (nl,)
        Group codes; negative matches nothing.

    Returns
    -------
    scores (nq, k) float64, indices (nq, k) int64 (-1 none)
    """
    q_keys, l_keys = np.asarray(q_keys, np.int64), np.asarray(l_keys, np.int64)
    scores = np.zeros((q_keys.shape[0], k))
    idx = np.full((q_keys.shape[0], k), -1, dtype=np.int64)
    for key in np.unique(q_keys[q_keys >= 0]):
        rows = np.flatnonzero(l_keys == key)  # ascending: a stable order keeps ties to the lowest row
        if not rows.size:
            continue
        qs = np.flatnonzero(q_keys == key)
        kk = min(k, rows.size)
        lib = l_emb[rows]
        for b in range(0, qs.size, block):
            qb = qs[b : b + block]
            sims = q_emb[qb] @ lib.T
            best = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
            scores[qb, :kk] = np.take_along_axis(sims, best, axis=1)
            idx[qb, :kk] = rows[best]
    return scores, idx


def _embedding_rows(ev: Evaluation, emb: np.ndarray, lab: LabData, name: str) -> np.ndarray:
    # one row per spectrum read, in file order: a count that differs means rows that belong to other spectra
    if emb.shape[0] != lab.n_source:
        raise FastspecError(f"{name}: {emb.shape[0]} embedding rows for a library of {lab.n_source} spectra "
                            f"(one row per spectrum read, in file order)")
    return emb[lab.source_index]


def embedding_analysis(
    ev: Evaluation,
    emb_lib: np.ndarray,
    emb_q: np.ndarray | None,
    ref_cfg: SearchConfig,
    embedding_threshold: float,
    spectral_threshold: float,
    n_pairs: int,
    hit_ks,
    n_bootstrap: int,
    seed: int,
    rows: list,
    split_name: str,
) -> dict:
    """NN baseline with embedding cosine, plus pairs with high embedding but low spectral similarity."""
    from fastspec import similarity
    from fastspec.baseline import prepare_side

    le = _embedding_rows(ev, emb_lib, ev.lib, "embeddings")
    qe = le if ev.qlab is ev.lib else _embedding_rows(ev, emb_q, ev.qlab, "query embeddings")
    if le.shape[1] != qe.shape[1]:
        raise FastspecError("library and query embeddings differ in dimension")
    cfg = ref_cfg.replace(search_k=max(max(hit_ks), ref_cfg.vote, ref_cfg.search_k))
    codes, _ = factorize([bucket_keys(ev.qlab, cfg.bucket), bucket_keys(ev.lib, cfg.bucket)])
    qk, lk = codes[: len(ev.qlab)], codes[len(ev.qlab) :]
    mask = np.zeros(len(ev.lib), bool)
    mask[ev.train_rows] = True
    # candidate pairs a run of test spectra at a time, as nn_search lists them (a large bucket at 2.4M: GBs)
    from fastspec.baseline import PAIRS_PER_CHUNK

    groups = similarity.KeyGroups(qk[ev.test_rows], lk, library_mask=mask)
    s = np.zeros((len(ev.test_rows), cfg.search_k))
    idx = np.full((len(ev.test_rows), cfg.search_k), -1, dtype=np.int64)
    for start, stop, offs, cand in groups.chunks(PAIRS_PER_CHUNK):
        if cand.shape[0]:
            s[start:stop], idx[start:stop] = embedding_topk(qe[ev.test_rows[start:stop]], le, offs, cand, cfg.search_k)
    covered = groups.lengths > 0
    fallback = np.zeros(len(ev.test_rows), bool)
    if cfg.no_neighbour == "fallback" and (~covered).any():  # as the spectral rows: the polarity's training side
        miss = np.flatnonzero(~covered)
        pcodes, _ = factorize([bucket_keys(ev.qlab, "none"), bucket_keys(ev.lib, "none")])
        s[miss], idx[miss] = embedding_topk_grouped(qe[ev.test_rows[miss]], pcodes[: len(ev.qlab)][ev.test_rows[miss]],
                                                    le, np.where(mask, pcodes[len(ev.qlab) :], -1), cfg.search_k)
        fallback[miss] = idx[miss, 0] >= 0
    res = NNResult(idx, s, covered, groups.lengths, fallback)
    rep, det = ev._score(res, cfg, hit_ks, n_bootstrap, seed, 0)
    rows.append({"split": split_name, "intensity_power": None, "mz_power": None, "shuffle": False, "embedding": True, **rep})

    # spectral (intensity-aware) similarity of each test spectrum and its embedding top-1 neighbour
    has = np.flatnonzero(det["pred_rows"] >= 0)
    pairs: list[dict] = []
    spec_sim = np.full(has.shape[0], np.nan)
    if has.size:
        pq_ = prepare_side(ev.qlab.spectra, cfg)
        pl_ = pq_ if ev.qlab is ev.lib else prepare_side(ev.lib.spectra, cfg, 1)
        q_rows = ev.test_rows[has]
        one = np.arange(has.size + 1, dtype=np.int64)
        sc, _, _ = similarity.topk_candidates(
            pq_.take(q_rows), pl_, one, det["pred_rows"][has], 1, metric=cfg.metric, tolerance=cfg.tolerance,
            mz_power=cfg.mz_power, intensity_power=cfg.intensity_power, **dict(cfg.metric_params)
        )
        spec_sim = sc[:, 0]
        emb_sim = s[has, 0]
        flag = (emb_sim >= embedding_threshold) & (spec_sim <= spectral_threshold)
        order = np.flatnonzero(flag)[np.argsort(-(emb_sim[flag] - spec_sim[flag]), kind="stable")][:n_pairs]
        for j in order.tolist():
            i = has[j]
            q, l = int(ev.test_rows[i]), int(det["pred_rows"][i])
            pairs.append(
                {
                    "query_index": q,
                    "library_index": l,
                    "query_molecule": ev.qlab.mol[q],
                    "library_molecule": ev.lib.mol[l],
                    "embedding_similarity": float(emb_sim[j]),
                    "spectral_similarity": float(spec_sim[j]),
                    "tanimoto": float(det["tanimoto"][i]),
                }
            )
    return {
        "n_test": int(len(ev.test_rows)),
        "mean_tanimoto": rep["mean_tanimoto"],
        "mean_tanimoto_all": rep["mean_tanimoto_all"],
        "exact_match_rate": rep["exact_match_rate"],
        "spectral_reference": {"metric": cfg.metric, "intensity_power": cfg.intensity_power, "mz_power": cfg.mz_power},
        "embedding_threshold": embedding_threshold,
        "spectral_threshold": spectral_threshold,
        "n_flagged": int(np.sum((s[has, 0] >= embedding_threshold) & (spec_sim <= spectral_threshold))) if has.size else 0,
        "pairs": pairs,
    }
