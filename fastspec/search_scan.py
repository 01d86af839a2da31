"""Whole-library search without a fragment-index bound, and the FAISS engine.

Binned cosine goes through an inverted bin index (built on first use, kept with the open library);
other metrics without a bound score every eligible library spectrum (the library prepared once per
search). ``engine="faiss"`` takes each query's nearest neighbours in the FAISS index and rescores them
exactly; open, analog and hybrid search take their first thresholds from the neighbours in the
small threshold index (in this one on libraries built without it).
"""
from __future__ import annotations

import math

import numpy as np

from fastspec.search import _batches, _Context, _n_blocks, _unit_weights, faiss_n_candidates, faiss_nprobe

#: Library spectra per chunk while the whole library is prepared (binned-cosine postings, brute force).
_BIN_CHUNK = 1 << 17
#: Most bins the inverted bin index takes (a count per bin, int32 bin ids); finer bins are scored by
#: brute force (2,000 Da at 1e-4 Da bins is 20M bins).
_BIN_MAX = 1 << 26


def faiss_candidates(ctx: _Context, rows: np.ndarray, n_cand: int, nprobe: int | None,
                     theta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_cand`` nearest library spectra of each query in the FAISS index (with ``theta`` the
    threshold index, :data:`fastspec._indexfmt.THETA_FILE`), filtered (CSR)."""
    from fastspec import vectors

    index = vectors.load_faiss_index(ctx.lib, theta=theta)
    params = ctx.lib.manifest["build"]["faiss"]
    qv = vectors.spectrum_vectors(ctx.q.take(rows, metadata=False), params, threads=ctx.cfg.threads)
    n = max(1, min(int(n_cand), int(index.ntotal)))
    cand = np.full((rows.shape[0], n), -1, dtype=np.int64)
    # one FAISS call per distinct filter combination among the queries (usually one or two
    # polarities), each restricted to the library rows it may match: the n neighbours are then n
    # eligible spectra. Filtering afterwards instead left some minority-polarity queries of a
    # MassBank-grown library with fewer than k of 300 neighbours.
    for sel, allowed in ctx.filter_groups(rows, packed=True):
        cand[sel] = vectors.faiss_search(index, qv[sel], n, nprobe=nprobe, threads=ctx.cfg.threads,
                                         allowed=allowed)
    valid = cand >= 0
    offs = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(valid.sum(axis=1), out=offs[1:])
    return ctx.filter_csr(rows, offs, cand[valid].astype(np.int64))


def n_bins(ctx: _Context) -> int:
    """Bins the library's binned vectors can use at the search's bin parameters: up to its largest
    fragment m/z (and precursor m/z when a precursor peak is added) or ``max_mz``, one spare against
    rounding."""
    lib, params = ctx.lib, ctx.qprep.params
    top = lib._cache.get("largest m/z")
    if top is None:
        mz, pmz = lib.array("mz"), lib.array("precursor_mz")
        top = (float(np.max(mz)) if mz.shape[0] else 0.0, float(np.nanmax(pmz, initial=0.0)))
        # this pass reads every stored m/z anyway: its largest must be the one the build recorded, or
        # a flipped byte inside mz.npy (NaN, inf, 1e300; the open-time checksums read only the file's
        # ends) would become a bin count (a ValueError, or brute force over absurd bins)
        recorded = lib.manifest["counts"].get("max_mz")
        if not math.isfinite(top[0]) or (recorded is not None and top[0] != float(recorded)):
            raise lib._corrupted(f"the largest m/z in mz is {top[0]!r}, the build recorded {recorded!r}")
        if not math.isfinite(top[1]):
            raise lib._corrupted(f"the largest precursor m/z is {top[1]!r}")
        lib._cache["largest m/z"] = top
    bw = float(params["bin_width"])
    n = int(max(top[0], top[1] if params.get("precursor_peak") is not None else 0.0) // bw) + 2
    if params.get("max_mz") is not None:
        n = min(n, int(float(params["max_mz"]) // bw) + 2)
    return n


def bin_postings(ctx: _Context):
    """The library's binned vectors (the search's bin parameters) as postings by bin
    (:class:`fastspec.kernels.bins.BinPostings`), built on first use and kept with the open library.

    Built from the stored peaks in chunks of :data:`_BIN_CHUNK` spectra, prepared exactly as
    :meth:`fastspec.search._Context.exact` prepares candidates; the postings take 8 bytes per stored
    bin plus 8 per bin of the m/z range (and as much again while they are built).
    """
    from fastspec.kernels.bins import BinPostings

    qp = ctx.qprep
    # one set per open library: the bin parameters fix the postings (a tolerance only through the
    # bin width it implies), and another set replaces it
    key = repr(sorted(qp.params.items()))
    have = ctx.lib._cache.get("bin postings")
    if have is not None and have[0] == key:
        return have[1]
    ctx.lib._cache.pop("bin postings", None)
    post = BinPostings(n_bins(ctx), len(ctx.lib))
    chunks = []
    for p in prepared_chunks(ctx):
        chunks.append((p.offsets, p.pos.astype(np.int32), _unit_weights(p).astype(np.float32)))
        post.add(*chunks[-1])
    post.finish()
    for chunk in chunks:
        post.add(*chunk)
    ctx.lib._cache["bin postings"] = (key, post)
    return post


def run_binned(ctx: _Context, rows, scores, indices, matches):
    """Whole-library binned cosine: candidates from the inverted bin index
    (:func:`fastspec.kernels.bins.binned_candidates`: every spectrum within a rounding margin of
    each query's k-th dot product), scored exactly."""
    from fastspec.kernels.bins import BinWorkspace, binned_candidates

    if rows.shape[0] == 0:
        return
    post = bin_postings(ctx)
    qp = ctx.qprep
    qv = _unit_weights(qp)
    qc, lc, sym = ctx.filters()
    n_blocks = _n_blocks(ctx.cfg.threads)
    n = max(len(ctx.lib), 1)
    ws = ctx.scratch("bin workspace", lambda: BinWorkspace(len(ctx.lib), n_blocks),
                     lambda w: w.n_blocks == n_blocks and w.acc.shape[1] == n)
    for batch in _batches(rows, 1024):
        offs, ids = binned_candidates(qp.offsets, qp.pos, qv, batch, post, ctx.cfg.k,
                                      min_matches=ctx.cfg.min_matches, min_score=ctx.cfg.min_score,
                                      q_codes=qc[batch], lib_codes=lc, sym=sym, workspace=ws,
                                      threads=ctx.cfg.threads)
        s, i, m = ctx.exact(batch, offs, ids)
        scores[batch], indices[batch], matches[batch] = s, i, m
        ctx.advance(batch.shape[0])


def run_brute_force(ctx: _Context, rows, scores, indices, matches):
    """Every eligible library spectrum as a candidate (metrics without a fragment-index bound).

    The whole library is prepared once per search (:func:`prepared_library`), and each query's
    candidates are the rows its filters allow (:meth:`fastspec.search._Context.allowed_rows`).
    Preparing and filtering the library again for every batch of 8 queries took 80% of the time: 2.4M
    MassBank-grown library, neutral-loss cosine, 1 thread, 428 ms per query (prepare 219, gather 66,
    filter 68, scoring 64).
    """
    if rows.shape[0] == 0:
        return
    n_lib = len(ctx.lib)
    lprep = prepared_library(ctx)
    per = max(1, int(2e7 // max(n_lib, 1)))  # candidate lists of at most ~2e7 entries (160 MB)
    for batch in _batches(rows, per):
        for sel, allowed in ctx.filter_groups(batch):
            sub = batch[sel]
            ids = np.arange(n_lib, dtype=np.int64) if allowed is None else np.flatnonzero(allowed)
            offs = np.arange(sub.shape[0] + 1, dtype=np.int64) * ids.shape[0]
            s, i, m = ctx.score(sub, lprep, offs, np.tile(ids, sub.shape[0]))
            scores[sub], indices[sub], matches[sub] = s, i, m
        ctx.advance(batch.shape[0])


def prepared_chunks(ctx: _Context):
    """The library's stored peaks prepared for the search's metric, :data:`_BIN_CHUNK` spectra at a
    time (one :class:`fastspec.similarity.Prepared` per chunk, library rows in order), exactly as
    :meth:`fastspec.search._Context.exact` prepares candidates."""
    from fastspec import similarity

    lib, kw = ctx.lib, ctx.cfg.metric_kwargs()
    off, mz, inten, pmz = (lib.array(a) for a in ("offsets", "mz", "intensity", "precursor_mz"))
    n = len(lib)
    for a in range(0, n, _BIN_CHUNK):
        b = min(n, a + _BIN_CHUNK)
        e0, e1 = int(off[a]), int(off[b])
        yield similarity.prepare_csr(np.asarray(off[a: b + 1]) - e0, np.asarray(mz[e0:e1]),
                                     np.asarray(inten[e0:e1], np.float64), np.asarray(pmz[a:b]), ctx.cfg.metric,
                                     threads=ctx.cfg.threads, **kw)


def prepared_library(ctx: _Context):
    """The whole library prepared for the search's metric (:func:`prepared_chunks` one after the
    other), built once per search and not kept after it."""
    from fastspec import similarity

    if ctx._whole is None:
        n = len(ctx.lib)
        # no preparation adds more than a peak per spectrum (the binned precursor peak): the output
        # is allocated once at that bound and filled chunk by chunk; pages never written are never
        # resident (a list of chunks joined at the end held the library twice: +1.1 GB at 2.4M)
        cap = int(ctx.lib.array("offsets")[-1]) + n
        pos, w = np.empty(cap), np.empty(cap)
        norm, pmz = np.empty(n), np.empty(n)
        offsets = np.zeros(n + 1, np.int64)
        at = row = 0
        first = None
        for p in prepared_chunks(ctx):
            if first is None:
                first = p
            m, c = int(p.offsets[-1]), len(p)
            pos[at:at + m], w[at:at + m] = p.pos, p.w
            norm[row:row + c], pmz[row:row + c] = p.norm, p.precursor_mz
            offsets[row + 1:row + c + 1] = p.offsets[1:] + at
            at, row = at + m, row + c
        if first is None:  # an empty library
            first = similarity.prepare_csr(np.zeros(1, np.int64), np.zeros(0), np.zeros(0), np.zeros(0),
                                           ctx.cfg.metric, threads=ctx.cfg.threads, **ctx.cfg.metric_kwargs())
        ctx._whole = similarity.Prepared(first.metric, offsets, pos[:at], w[:at], norm, pmz, first.tolerance,
                                         dict(first.params))
    return ctx._whole


def run_faiss(ctx: _Context, rows, scores, indices, matches):
    """FAISS proposes ``n_candidates`` spectra per query; they are filtered and scored exactly."""
    cfg = ctx.cfg
    n_cand = faiss_n_candidates(cfg)
    nprobe = faiss_nprobe(cfg, ctx.lib)  # the search's, else the build's
    for batch in _batches(rows, 4096):
        offs, ids = faiss_candidates(ctx, batch, n_cand, nprobe)
        s, i, m = ctx.exact(batch, offs, ids)
        scores[batch], indices[batch], matches[batch] = s, i, m
        ctx.advance(batch.shape[0])
