"""Hashed, binned spectrum vectors and the FAISS index used by ``engine="faiss"``.

A spectrum becomes a ``dim``-dimensional vector: each peak's weight (``intensity ** intensity_power``)
is added to the bin ``floor((mz + offset) / bin_width)``, bins are hashed into ``dim`` slots, and the
vector is L2-normalised, so the inner product approximates a binned cosine. FAISS (imported lazily)
searches an IVF index of these vectors; its candidates are always rescored exactly by the caller.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fastspec._indexfmt import THETA_FILE, THETA_MIN
from fastspec.errors import FastspecError
from fastspec.kernels._config import threads as _threads
from fastspec.kernels.hashed import _nearest_lists, _vectors

DEFAULTS: dict[str, Any] = {
    "dim": 256,
    "bin_width": 1.0,
    "offset": 0.3,  # nominal-mass bins [n-0.3, n+0.7): small-molecule mass defects rarely cross them
    "intensity_power": 0.5,
    "index": "IVF{nlist},SQ8",
    "nlist": None,  # default: ~sqrt(n), clipped to [16, 16384]
    "n_train": None,  # default: 40 points per list
    "nprobe": 16,
    "seed": 0,
    "flat_below": 20_000,  # fewer spectra: an exhaustive flat index
    # the threshold index (THETA_FILE): a small 4-bit PQ fast-scan IVF next to an IVF main index, None for none
    "theta_index": "IVF{nlist},PQ32x4fs",
    "theta_nlist": None,  # default: ~sqrt(n) / 6, clipped to [16, 1024]
}
# The threshold index (THETA_FILE; its name and THETA_MIN, the fewest spectra it is built for, live
# with the index format in fastspec._indexfmt): the first pruning thresholds of open, analog and
# hybrid search (their candidates are rescored exactly, so only how good the k-th score among them is
# matters) come from it instead of the main index. 4-bit PQ codes are 16 bytes per spectrum (SQ8: 256), scanned with SIMD lookups, and
# held in memory (57 MB at 2.4M); few lists (256 at 2.4M) keep the coarse assignment of the build cheap
# (2.4M spectra, FAISS's dense assignment: 6 s, against 39 s for the main index's 1,536; the build now
# assigns vectors itself, :func:`nearest_lists`, 3-5 s for both). Too coarse for the engine's own
# candidates (recall@10 of open cosine at 500 candidates 0.71 against SQ8's 0.95), good enough for a
# threshold. 2.4M MassBank-grown library, 1,000 queries, 1 thread, 4 interleaved rounds, same hits,
# median ms/query with SQ8 (100 candidates at nprobe 4) -> this index (300 at nprobe 4): open cosine
# copies 0.442 -> 0.425, novel compounds 1.344 -> 1.172; open entropy novel 3.62 -> 3.57; analog
# copies 1.428 -> 1.181, novel 2.452 -> 2.330.


#: vectors computed and added to the FAISS indexes at a time (200k x 256 float32: 205 MB)
_ADD_CHUNK = 200_000
def nearest_lists(x: np.ndarray, centroids_t: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Inverted list of each vector: the centroid of largest inner product (lowest on ties; -1, no list,
    for a vector with a NaN or infinite slot, as FAISS does). Sums are float32 in slot order, so where two
    centroids' products tie within float32 rounding the pick can differ from FAISS's (a BLAS product):
    either list is as good for search.

    Parameters
    ----------
    x : ndarray, float32 (n, dim)
        Hashed spectrum vectors (mostly zeros; only nonzero slots cost work).
    centroids_t : ndarray, float32 (dim, nlist)
        The coarse quantizer's centroids, transposed (C-contiguous).

    Returns
    -------
    ndarray, int64 (n,)
        List numbers in ``[0, nlist)``, or -1.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    centroids_t = np.ascontiguousarray(centroids_t, dtype=np.float32)
    if x.ndim != 2 or centroids_t.ndim != 2 or x.shape[1] != centroids_t.shape[0] or centroids_t.shape[1] < 1:
        raise FastspecError(f"nearest_lists: x (n, dim) and centroids_t (dim, nlist >= 1) needed, got {x.shape} "
                            f"and {centroids_t.shape}")
    out = np.empty(x.shape[0], dtype=np.int64)
    if x.shape[0]:
        with _threads(threads):
            _nearest_lists.pick(x.shape[0], threads)(x, centroids_t, out)
    return out


def _flat_ip_centroids(faiss, index) -> np.ndarray | None:
    """Transposed centroids (float32 (dim, nlist)) of an inner-product IVF index over raw vectors (flat, SQ
    or PQ codes) whose coarse quantizer is exhaustive, so that :func:`nearest_lists` can stand in for its
    assignment; None for any other index (FAISS then assigns vectors itself). Exact types only: fast-scan
    IVF indexes do not take precomputed lists (``add_core`` corrupts the heap), pre-transforms change
    the vectors."""
    top = faiss.downcast_index(index)
    if type(top) not in (faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer, faiss.IndexIVFPQ):
        return None
    quantizer = faiss.downcast_index(top.quantizer)
    if type(quantizer) not in (faiss.IndexFlat, faiss.IndexFlatIP) or \
            quantizer.metric_type != faiss.METRIC_INNER_PRODUCT or top.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    return np.ascontiguousarray(quantizer.reconstruct_n(0, quantizer.ntotal).T)


def _plain_twin(faiss, index):
    """For a trained inner-product IVF-PQ fast-scan index of raw (not residual) codes: an
    ``IndexIVFPQ`` with the same coarse centroids and PQ codebooks, which takes precomputed lists
    (``add_core``) and converts back (``faiss.IndexIVFPQFastScan(twin, bbs)``, which repacks its codes) to
    the index adding the same vectors to ``index`` with the same lists would have made. None for any
    other index."""
    top = faiss.downcast_index(index)
    if type(top) is not faiss.IndexIVFPQFastScan or top.by_residual or not top.is_trained \
            or top.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    quantizer = faiss.downcast_index(top.quantizer)
    if type(quantizer) not in (faiss.IndexFlat, faiss.IndexFlatIP):
        return None
    flat = faiss.IndexFlat(top.d, faiss.METRIC_INNER_PRODUCT)
    flat.add(quantizer.reconstruct_n(0, quantizer.ntotal))
    twin = faiss.IndexIVFPQ(flat, top.d, top.nlist, top.pq.M, top.pq.nbits, faiss.METRIC_INNER_PRODUCT)
    twin.by_residual = False
    faiss.copy_array_to_vector(faiss.vector_to_array(top.pq.centroids), twin.pq.centroids)
    twin.is_trained = True
    return twin


def spectrum_vectors(spectra, params: dict | None = None, threads: int | None = None) -> np.ndarray:
    """L2-normalised hashed bin vectors, float32 (n, dim)."""
    return csr_vectors(spectra.offsets, spectra.mz, spectra.intensity, params, threads)


def csr_vectors(offsets: np.ndarray, mz: np.ndarray, intensity: np.ndarray, params: dict | None = None,
                threads: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`spectrum_vectors` of CSR peaks.

    Parameters
    ----------
    offsets : ndarray, int64 (n+1,)
        May be a slice ``offsets[a:b+1]`` of a larger set (``offsets[0] != 0``), with ``mz`` and
        ``intensity`` the matching peak slices ``[offsets[0]:offsets[-1]]``: a chunk of rows without a copy.
    mz : ndarray, float64 (n_peaks,)
    intensity : ndarray, float32 (n_peaks,)
    out : ndarray, float32 (>= n, dim), optional
        Buffer to write into (its first ``n`` rows are returned); reused across chunks it spares a fresh
        allocation per chunk.

    Returns
    -------
    ndarray, float32 (n, dim)
    """
    p = dict(DEFAULTS, **(params or {}))
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    mz = np.ascontiguousarray(mz, dtype=np.float64)
    intensity = np.ascontiguousarray(intensity, dtype=np.float32)
    n = offsets.shape[0] - 1
    # the kernel reads the peaks unchecked
    if n < 0 or mz.shape != intensity.shape or mz.shape[0] != offsets[-1] - offsets[0]:
        raise FastspecError("csr_vectors: offsets (n+1,) must span exactly the mz and intensity slices given")
    dim = int(p["dim"])
    if out is None:
        out = np.empty((n, dim), dtype=np.float32)
    elif out.dtype != np.float32 or out.ndim != 2 or out.shape[0] < n or out.shape[1] != dim or not out.flags.c_contiguous:
        raise FastspecError(f"csr_vectors: out must be a C-contiguous float32 array of at least ({n}, {dim})")
    out = out[:n]
    if n:
        with _threads(threads):
            _vectors.pick(n, threads)(offsets, mz, intensity, dim, float(p["bin_width"]), float(p["offset"]),
                                      float(p["intensity_power"]), out)
    return out


#: True in a child forked after faiss was imported: GNU OpenMP (which faiss-cpu bundles) cannot start a
#: thread team in a forked child of a process that ran one (the child hangs at its first parallel region,
#: e.g. the threshold index's search of an analog or hybrid search), so faiss runs one thread there.
#: Spawned processes (multiprocessing's "spawn" / "forkserver") are not affected.
_FORKED = False


def _after_fork_in_child() -> None:
    global _FORKED
    if "faiss" in sys.modules:
        _FORKED = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def faiss_threads(faiss, n: int | None):
    """faiss's OpenMP threads for the enclosed calls: ``n`` capped like numba's (``None``: all of
    ``NUMBA_NUM_THREADS``), one in a forked child (:data:`_FORKED`); the calling thread's own setting is
    restored afterwards (it is per thread, and a search must not leave it changed)."""
    from fastspec.kernels._config import capped, swapped

    with swapped(faiss.omp_get_max_threads, faiss.omp_set_num_threads, 1 if _FORKED else capped(n)) as want:
        yield want


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise FastspecError("engine='faiss' needs the faiss-cpu package") from e
    return faiss


def _nlist(n: int, nlist: int | None = None) -> int:
    """Inverted lists for ``n`` spectra: ``nlist`` or ~sqrt(n) in [16, 16384], at most n / 39 (faiss
    wants >= 39 training points per centroid)."""
    return max(1, min(int(nlist or np.clip(np.sqrt(n), 16, 16384)), max(1, n // 39)))


def check_params(params: dict) -> None:
    """Refuse ``faiss_params`` values a build could not use (ParameterError), before any work: counts that
    are not integers >= 1 (or None), and index descriptions FAISS cannot parse."""
    from fastspec.errors import ParameterError

    p = dict(DEFAULTS, **params)
    for key in ("nlist", "theta_nlist", "n_train", "dim", "nprobe"):
        v = p.get(key)
        optional = key not in ("dim", "nprobe")
        if v is None and optional:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ParameterError(f"faiss_params: {key} must be an integer >= 1{' or None' if optional else ''}, "
                                 f"got {v!r}")
    for key in ("index", "theta_index"):
        desc = p.get(key)
        if desc is None and key == "theta_index":
            continue
        if not isinstance(desc, str):
            raise ParameterError(f"faiss_params: {key} must be a FAISS index description such as "
                                 f"{DEFAULTS[key]!r}, got {desc!r}")
        faiss = _faiss()
        try:  # an empty index of that description (cheap: nothing is trained or added)
            faiss.index_factory(int(p["dim"]), desc.format(nlist=16), faiss.METRIC_INNER_PRODUCT)
        except (RuntimeError, KeyError, IndexError, ValueError) as e:
            why = (str(e).splitlines() or [type(e).__name__])[0].rsplit(": ", 1)[-1]
            raise ParameterError(f"faiss_params: FAISS cannot build {key} {desc!r} at dim {p['dim']} ({why})"
                                 + ("; theta_index=None builds no threshold index" if key == "theta_index" else "")
                                 ) from None


def _theta_nlist(n: int, nlist: int | None = None) -> int:
    """Inverted lists of the threshold index: ``nlist`` or ~sqrt(n) / 6 in [16, 1024], at most n / 39."""
    return max(1, min(int(nlist or np.clip(np.sqrt(n) / 6, 16, 1024)), max(1, n // 39)))


def build_faiss_index(path: Path, spectra, params: dict | None = None, threads: int | None = None) -> dict:
    """Train an IVF index on a sample, add every spectrum (in chunks) and write it to ``path``; next to
    an IVF index of at least ``THETA_MIN`` spectra also the threshold index (:data:`THETA_FILE`, from
    the same vectors).

    Returns
    -------
    dict
        The parameters actually used (stored in the manifest); ``theta`` describes the threshold index
        (None when there is none).
    """
    faiss = _faiss()
    with faiss_threads(faiss, threads):
        return _build_faiss_index(faiss, path, spectra, params, threads)


def _write_faiss(index, path) -> None:
    """``faiss.write_index``, its C++ write error (a full disk, a file-size limit: a RuntimeError quoting the
    temporary path) raised as FastspecError with the reason."""
    import faiss

    try:
        faiss.write_index(index, str(path))
    except RuntimeError as e:
        # "... write error in PATH: 0 != 1 (File too large)", "... could not open PATH for writing: No space
        # left on device": the text after the last ": " (a path may hold parentheses)
        why = str(e).strip().splitlines()[-1].rsplit(": ", 1)[-1].strip()
        why = why[why.find("(") + 1:-1] if why.endswith(")") and "(" in why else why
        raise FastspecError(f"I/O error writing the FAISS index {Path(path).name}: {why}; is the disk full?") from None


def _build_faiss_index(faiss, path: Path, spectra, params: dict | None, threads: int | None) -> dict:
    p = dict(DEFAULTS, **(params or {}))
    n = len(spectra)
    nlist = _nlist(n, p["nlist"])
    p["nlist"] = nlist
    # small libraries: exhaustive inner product (exact, no training)
    desc = "Flat" if n < int(p.get("flat_below", 20_000)) else p["index"].format(nlist=nlist)
    dim = int(p["dim"])
    index = faiss.index_factory(dim, desc, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(int(p["seed"]))
    n_train = min(n, int(p["n_train"] or 40 * nlist))
    sample = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
    offsets, mz, intensity = spectra.offsets, spectra.mz, spectra.intensity
    theta = theta_desc = None
    if desc != "Flat" and p.get("theta_index") and n >= THETA_MIN:
        theta_nlist = _theta_nlist(n, p.get("theta_nlist"))
        theta_desc = str(p["theta_index"]).format(nlist=theta_nlist)
        theta = faiss.index_factory(dim, theta_desc, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained or (theta is not None and not theta.is_trained):
        from fastspec.kernels.peaks import gather_csr

        train = csr_vectors(*gather_csr(offsets, mz, intensity, sample, threads=threads), p, threads)
        if not index.is_trained:
            index.train(train)
        if theta is not None and not theta.is_trained:
            # 40 points per list, and at least 1,024 for the 16 centroids of each PQ sub-quantizer: every
            # k-th of the main sample, or a sample of its own when that is smaller (a small nlist / n_train)
            want = min(n, max(40 * theta_nlist, 1024))
            if train.shape[0] >= want:
                tx = train[::train.shape[0] // want][:want]
            else:
                rows = np.sort(rng.choice(n, size=want, replace=False)) if want < n else np.arange(n)
                tx = csr_vectors(*gather_csr(offsets, mz, intensity, rows, threads=threads), p, threads)
            theta.train(np.ascontiguousarray(tx))
            del tx
        del train
    # rows in chunks straight from the CSR arrays (no Spectra.take: it also gathered the metadata), into one
    # reused buffer (a fresh 200 MB array per chunk costs its page faults every time)
    chunk = min(n, _ADD_CHUNK)
    buf = np.empty((chunk, dim), dtype=np.float32)
    centroids_t = _flat_ip_centroids(faiss, index)
    # a fast-scan index assigns vectors itself: codes go into a plain IVF-PQ twin, repacked at the end
    theta_twin = _plain_twin(faiss, theta) if theta is not None else None
    theta_t = _flat_ip_centroids(faiss, theta_twin) if theta_twin is not None else None
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        lo, hi = int(offsets[a]), int(offsets[b])
        x = csr_vectors(offsets[a:b + 1], mz[lo:hi], intensity[lo:hi], p, threads, out=buf)
        if centroids_t is None:
            index.add(x)
        else:  # FAISS's assignment is a dense product with every centroid: ours skips the zero slots (the
            # same lists but where two centroids tie within float32 rounding, MassBank and the 2.4M benchmark
            # library: the same index files byte for byte)
            lists = nearest_lists(x, centroids_t, threads)
            faiss.downcast_index(index).add_core(x.shape[0], faiss.swig_ptr(x), None, faiss.swig_ptr(lists))
        if theta_t is not None:
            lists = nearest_lists(x, theta_t, threads)
            theta_twin.add_core(x.shape[0], faiss.swig_ptr(x), None, faiss.swig_ptr(lists))
        elif theta is not None:
            theta.add(x)
    del buf
    if theta_t is not None:
        theta = faiss.IndexIVFPQFastScan(theta_twin, theta.bbs)  # keeps a reference to the twin's quantizer
        theta_twin.reset()  # its codes are repacked: free them (16 + 8 bytes per spectrum)
    _write_faiss(index, path)
    p["n_train"] = n_train
    p["ntotal"] = int(index.ntotal)
    p["index"] = desc
    p["theta"] = None
    if theta is not None:
        _write_faiss(theta, Path(path).with_name(THETA_FILE))
        p["theta"] = {"index": theta_desc, "nlist": theta_nlist, "ntotal": int(theta.ntotal)}
    return p


def requested_params(stored: dict | None, n: int) -> dict:
    """The FAISS options a build of ``n`` spectra was given, recovered from the ones it resolved to (for
    manifests that did not record them): the index type and list count are dropped when they are what
    the defaults give at that size, so that a rebuild at another size resolves them again."""
    p = dict(stored or {})
    for k in ("n_train", "ntotal", "theta"):
        p.pop(k, None)
    nlist = p.get("nlist")
    small = n < int(p.get("flat_below", DEFAULTS["flat_below"]))
    if p.get("index") == "Flat" and small or p.get("index") == DEFAULTS["index"].format(nlist=nlist):
        p.pop("index")
    if nlist == _nlist(n):
        p.pop("nlist")
    return p


def load_faiss_index(library, theta: bool = False):
    """The library's FAISS index, or with ``theta`` its threshold index (:data:`THETA_FILE`; check
    ``library.has_faiss_theta`` first), read once and cached on the Library."""
    key = "faiss theta" if theta else "faiss"
    idx = library._cache.get(key)
    if idx is None:
        library._adopt_if_pending()
        generation = library._generation
        library._check_unchanged()
        faiss = _faiss()
        path = str(library.path / (THETA_FILE if theta else "faiss.index"))
        try:
            try:  # memory-mapped: only the inverted lists queries probe become resident (1M: 256 MB otherwise)
                idx = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:  # index types faiss cannot map
                idx = faiss.read_index(path)
            _no_prefetch_threads(faiss, idx)
        except (RuntimeError, MemoryError) as e:  # MemoryError: a damaged list size asks for terabytes
            from fastspec._indexfmt import resource_error

            limit = resource_error(e, path)
            if limit is not None:
                raise limit from None
            library._check_unchanged()  # a rebuild swapped in meanwhile is no corruption: open it again
            raise library._corrupted(f"cannot read {Path(path).name} ({str(e).splitlines()[0] or type(e).__name__})") \
                from None
        # checked after the read too, as Library.array does: an append that swapped the directory in between
        # gave this object the new index's file (its vectors then miscount this library's spectra)
        library._check_unchanged()
        bad = _bad_shape(faiss, idx, library.manifest["build"].get("faiss") or {}) or _bad_ids(faiss, idx, len(library))
        if bad is not None:
            raise library._corrupted(f"{Path(path).name} {bad}")
        if not library._keep("_cache", key, idx, generation):  # the library took on its own append meanwhile
            return load_faiss_index(library, theta)
    return idx


def _bad_shape(faiss, index, params: dict) -> str | None:
    """What is wrong with a FAISS index's dimension or metric against the build parameters in the manifest:
    a file swapped in under a re-signed manifest would otherwise fail inside faiss's search with a bare
    AssertionError (another dimension) or rank by L2 distance (another metric)."""
    dim = params.get("dim")
    if dim is not None and int(index.d) != int(dim):
        return f"has dimension {int(index.d)}, the manifest says {int(dim)}"
    if int(index.metric_type) != int(faiss.METRIC_INNER_PRODUCT):
        return "does not rank by inner product"
    return None


def _bad_ids(faiss, index, n: int) -> str | None:
    """What is wrong with a FAISS index's vector ids (library rows), checked once when it is loaded: a
    flipped byte inside the file passes the open-time edge checksums, and a damaged id would index the
    library out of range (a crash) or, through the search's ID selector, silently drop hits. One pass over
    the inverted lists' ids (2.4M spectra: 19 MB)."""
    if int(index.ntotal) != n:
        return f"holds {int(index.ntotal)} vectors for {n} spectra"
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # flat: the ids are the positions
        return None
    inv = ivf.invlists
    total, lo, hi = 0, 0, -1
    for li in range(int(ivf.nlist)):
        size = int(inv.list_size(li))
        if size == 0:
            continue
        ptr = inv.get_ids(li)
        try:
            ids = faiss.rev_swig_ptr(ptr, size)
            lo, hi = min(lo, int(ids.min())), max(hi, int(ids.max()))
        finally:
            inv.release_ids(li, ptr)
        total += size
    if total != n:
        return f"lists hold {total} vectors for {n} spectra"
    if lo < 0 or hi >= n:
        return f"holds ids outside [0, {n})"
    return None


def _no_prefetch_threads(faiss, index) -> None:
    """Stop a memory-mapped index from starting its page-prefetch threads on every search.

    faiss's on-disk inverted lists start ``prefetch_nthread`` (32) threads per search call to touch the
    probed lists, whatever ``threads`` says; the probed lists are read right after anyway. 2.4M
    MassBank-grown library, 100 candidates at nprobe 4, 1 thread: 0.33-0.38 -> 0.28-0.32 ms/query.
    """
    try:
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    except (RuntimeError, AttributeError):  # flat index: no inverted lists
        return
    if hasattr(lists, "prefetch_nthread"):
        lists.prefetch_nthread = 0


def pack_rows(allowed: np.ndarray) -> np.ndarray:
    """The bitmap of a bool row mask that FAISS's ``IDSelectorBitmap`` reads: uint8, bit ``i % 8`` of byte
    ``i // 8`` set for row ``i`` (:func:`faiss_search` takes either)."""
    return np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")


def faiss_search(index, vectors: np.ndarray, n: int, nprobe: int | None = None, threads: int | None = None,
                 allowed: np.ndarray | None = None) -> np.ndarray:
    """Top-``n`` library rows by inner product, int64 (nq, n), -1 padding.

    ``allowed`` (bool (ntotal,), or its uint8 :func:`pack_rows` bitmap; optional): only these rows are
    returned. FAISS skips the others while it scans the probed lists (an ID selector), so the ``n``
    neighbours are ``n`` allowed ones, not what is left of ``n`` after a filter. Index types that take
    no search parameters (IndexPQ) return unfiltered neighbours instead.
    """
    faiss = _faiss()
    with faiss_threads(faiss, threads):
        return _faiss_search(faiss, index, vectors, n, nprobe, allowed)


def _faiss_search(faiss, index, vectors: np.ndarray, n: int, nprobe: int | None, allowed: np.ndarray | None) -> np.ndarray:
    try:
        faiss.extract_index_ivf(index)
        ivf = True
    except RuntimeError:  # flat index
        ivf = False
    n = max(1, min(int(n), int(index.ntotal)))
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    sel = bitmap = None
    if allowed is not None:
        allowed = np.asarray(allowed)
        nbytes = (int(index.ntotal) + 7) // 8
        if allowed.dtype == np.uint8:
            if allowed.shape != (nbytes,):
                raise ValueError(f"allowed bitmap: expected shape ({nbytes},), got {allowed.shape}")
            bitmap = np.ascontiguousarray(allowed)
        else:
            if allowed.shape != (int(index.ntotal),):
                raise ValueError(f"allowed: expected shape ({index.ntotal},), got {allowed.shape}")
            bitmap = pack_rows(allowed)
        if not bitmap.any():
            return np.full((x.shape[0], n), -1, dtype=np.int64)
        sel = faiss.IDSelectorBitmap(bitmap.shape[0], faiss.swig_ptr(bitmap))
    # nprobe and the selector go with this call, not into the shared index: concurrent searches of one
    # library may ask for different ones
    if ivf:
        params = faiss.SearchParametersIVF(nprobe=int(nprobe or DEFAULTS["nprobe"]), sel=sel)
    else:
        params = None if sel is None else faiss.SearchParameters(sel=sel)
    try:
        _, ids = index.search(x, n, params=params)
    except RuntimeError:
        if sel is None or ivf:
            raise
        # index types without search parameters (e.g. IndexPQ): unfiltered; the caller filters anyway
        _, ids = index.search(x, n)
    del sel, bitmap  # the selector only points into the bitmap: both live until the search returns
    return ids.astype(np.int64)
