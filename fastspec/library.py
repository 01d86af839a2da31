"""A searchable spectral library stored as an index directory (``lib.fastspec/``).

Layout (all arrays ``.npy``, memory-mapped on open; see :mod:`fastspec._indexfmt` for the manifest):

=============================================  =====================================================
``offsets, mz, intensity``                     preprocessed peaks (CSR int64 / float64 / float32), in
                                               library order (input order minus rejected spectra)
``precursor_mz, charge, polarity``             float64 (NaN unknown), int8, int8 (+1/-1/0)
``norm``                                       L2 norm of each spectrum's intensities (float64): with
                                               the stored peaks, the prepared form of cosine and
                                               modified cosine at default weights (scored in place)
``prec_order, prec_sorted``                    rows sorted by precursor m/z (NaN last) and the values
``prec_offsets, prec_mz, prec_intensity,``     the peaks again, spectra in ``prec_order`` (those with a
``prec_norm``                                  precursor only), and their intensities' L2 norms: an
                                               identity window is one contiguous block (optional:
                                               older indexes search without it)
``prec_entropy_w``                             the copy's entropy weights as entropy search prepares
                                               stored peaks (``clean=False``; float32; absent when that
                                               would drop a peak): identity search scores entropy in
                                               place (optional)
``entropy_w``                                  the same for the stored peaks in library order: open,
                                               hybrid and formula search score entropy candidates in
                                               place (optional; absent when a stored peak would be
                                               dropped, and then ``prec_entropy_w`` too if that peak
                                               lies in the copy)
``wblk_mz, wblk_loc, wblk_wcos,``              the peak copy again, re-sorted by m/z within blocks
``wblk_went_sqrt``                             of ``window_block`` (manifest) spectra: float32 m/z,
                                               uint16 spectrum in the block, scan weights (cosine:
                                               L2-normalised intensity; entropy: square root of the
                                               weight). Identity search bounds window candidates
                                               through it (optional: searched without it when absent)
``wblk_sum``                                   every 32nd entry of ``wblk_mz`` (float32), where identity
                                               search looks first for a query peak's entries in a
                                               block (optional: the same bounds without it)
``wcos, went, min_gap``                        per-peak cosine (L2-normalised) and entropy (weighted,
                                               sum 1) weights; per-spectrum smallest peak gap
``frag_mz, frag_spec, frag_wcos,``             fragment-ion index: every peak sorted by m/z, its
``frag_went_sqrt``                             spectrum (scan id), its scan weights (entropy: square
                                               roots)
``nl_mz, nl_spec, nl_wcos``                    neutral-loss index: ``precursor_mz - mz`` sorted
``nl_went_sqrt``                               its entropy scan weights (hybrid search; optional:
                                               computed on first use when absent)
``*_q8`` (of the four scan-weight arrays)      uint8 codes of those weights, the bound scans' band
                                               pre-filter (``fragment.quantize_weights``; optional:
                                               computed on first use when absent)
``scan_rows``                                  int64 library row of each scan id (``SCAN_ORDER``;
                                               format 2 had none: its entries name rows)
``frag_groups, nl_groups``                     both indexes hold negative, then positive, then
                                               unknown-polarity spectra, each group sorted; the
                                               group boundaries (int64 (4,)). A search scans only
                                               the groups its query may match
``formula_keys, formula_offsets, formula_ids``  canonical Hill formula buckets (CSR of library rows)
``{formula,adduct,instrument}_{code,keys}``    int32 codes per spectrum (-1 unknown) and the strings
``metadata.parquet``                           every metadata column (+ ``formula_canonical``); read
                                               lazily, only the columns and row groups needed
``inputs.parquet``                             the input files (path bytes, records, source) in input
                                               order (optional: older indexes did not record them)
``input_index``                                int64 position of each library row among the input
                                               records, rejected ones included (``Library.input_index``)
``faiss.index``                                optional FAISS index over hashed spectrum vectors: IVF
                                               (SQ8), or flat below ``flat_below`` (20,000) spectra
``faiss_theta.index``                          next to a non-flat ``faiss.index`` of 1,000+ spectra: a
                                               4-bit PQ fast-scan IVF of the same vectors, for the
                                               first thresholds of open / analog / hybrid search
=============================================  =====================================================
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from fastspec import _indexfmt as fmt
from fastspec._atomic import absolute_path, aside_prefix, temporary_prefix
from fastspec._version import __version__
from fastspec.errors import (FastspecError, IndexChangedError, IndexFormatError, ParameterError, ParseError,
                             interrupts)
from fastspec.spectra import Spectra, has_column
from fastspec.spectra import is_matchms as _is_matchms
from fastspec.spectra import matchms_to_spectra

PathLike = "str | os.PathLike"
_DEFAULT = "default"

#: How the fragment and neutral-loss indexes number spectra (``scan_rows.npy``: the row of each id):
#: by base-peak m/z (0.01 Da), then second-peak m/z (0.1 Da), then precursor m/z. The bound search
#: keeps two accumulators per spectrum and reaches them through index entries; with ids of spectra that
#: share fragments close together, those reads share cache lines whatever order the library came in.
#: With ids = rows, the search was fast only on libraries already grouped by compound: 2.4M
#: MassBank-grown library, 300 novel-compound queries, 1 thread, ms/query open entropy / open cosine /
#: analog: input in MassBank's compound order
#: 5.83 / 2.33 / 4.86, the same spectra shuffled 10.6 / 4.56 / 7.59; base-peak ids 6.02 / 2.48 / 5.07
#: and 6.80 / 2.75 / 5.67 (precursor-m/z ids: entropy 6.89 and 7.65). The second peak as the next key
#: (4 interleaved passes, MassBank order): 6.30 / 2.46 / 5.10 -> 5.91 / 2.31 / 4.85, the input order's
#: own 5.49 / 2.24 / 4.76; on shuffled input no different (6.62 / 2.62 / 5.62 against 6.44 / 2.64 /
#: 5.71): what is left there is reading the survivors' peaks, which stay in row order.
SCAN_ORDER = "base_peak"

#: The index's record of its inputs (:attr:`Library.input_files`).
INPUTS_FILE = "inputs.parquet"

#: Reason recorded for spectra dropped because preprocessing left no peak.
REASON_NO_PEAKS = "no peaks after preprocessing"
REASON_MS1 = "MS1 spectrum (ms_level 1)"
REASON_MSN = "MSn spectrum (ms_level 3 or more)"

#: Fragment-weight arrays stored at build time: (kind, mz_power, intensity_power) -> file stem.
STORED_WEIGHTS = {("cosine", 0.0, 1.0): "wcos", ("entropy", 0.0, 1.0): "went"}

#: Rows per row group of ``metadata.parquet`` at build (recorded in the manifest; readers take the sizes
#: from the file's footer, so indexes written with other sizes read the same).
#: Hit tables read a few scattered rows: one 8-column string group decodes in ~1.5 ms at 8,192 rows,
#: ~12 ms at 65,536; reading the whole table takes 1.2x as long, the file is the same size (2.4M spectra).
_METADATA_ROW_GROUP = 8192
#: Spectra per block of the precursor-block index (``wblk_*``), which identity search bounds through.
WINDOW_BLOCK = 1024
#: Scan weights stored with the precursor-block index, per metric kind: file stems.
WINDOW_WEIGHTS = {"cosine": "wblk_wcos", "entropy": "wblk_went_sqrt"}

#: Groups of the fragment and neutral-loss indexes: 0 negative, 1 positive, 2 unknown polarity.
N_POLARITY_GROUPS = 3


def polarity_groups(polarity: np.ndarray) -> np.ndarray:
    """The index group (int8) of each spectrum from its polarity (+1 / -1 / 0)."""
    pol = np.asarray(polarity)
    return np.where(pol < 0, 0, np.where(pol > 0, 1, 2)).astype(np.int8)


def allowed_groups(query_polarity: np.ndarray) -> np.ndarray:
    """bool (nq, 3): the index groups each query may match. A query never matches the other polarity;
    an unknown polarity on either side matches both."""
    pol = np.asarray(query_polarity)
    return np.stack([pol <= 0, pol >= 0, np.ones(pol.shape, bool)], axis=1)


# ====================================================================================== input helpers
def resolve_pipeline(preprocess: Any):
    """A preprocessing Pipeline (or None) from ``"default"``, None/False, a Pipeline, a config dict or a
    compact string (``fastspec.preprocess`` syntax)."""
    if preprocess is None or preprocess is False:
        return None
    from fastspec import preprocess as pp

    if isinstance(preprocess, str) and preprocess == _DEFAULT or preprocess is True:
        return pp.default_pipeline()
    if isinstance(preprocess, pp.Pipeline):
        return preprocess
    if isinstance(preprocess, dict):
        return pp.Pipeline.from_config(preprocess)
    if isinstance(preprocess, str):
        return _parse_pipeline_string(preprocess)
    raise ParameterError(f"preprocess: expected 'default', None, a Pipeline, a dict or a string, got {type(preprocess).__name__}")


def _parse_pipeline_string(text: str):
    from fastspec import preprocess as pp

    for name in ("parse", "from_string", "parse_pipeline"):
        f = getattr(pp.Pipeline, name, None) or getattr(pp, name, None)
        if callable(f):
            return f(text)
    raise ParameterError("this fastspec build cannot parse preprocessing strings")


def pipeline_config(pipeline) -> dict | None:
    return None if pipeline is None else pipeline.to_config()


def apply_pipeline(pipeline, spectra: Spectra, threads: int | None = None) -> Spectra:
    """Preprocess, keeping one output spectrum per input spectrum (dropped ones come back without peaks,
    so that they are counted as rejected and query rows keep their positions).

    Whatever the pipeline (also ``None``), peaks that are not peaks are dropped last: m/z or intensity
    NaN/inf, m/z <= 0, intensity < 0 (a negative intensity breaks the fragment-index upper bounds).
    Zero intensities stay, as matchms keeps them (every preprocessing step drops them, so only
    ``None`` or a custom callable lets them through), except in a spectrum without a positive one, which
    then has no peaks. The cosine index weights store them as the smallest normal float32, so that
    ``min_matches`` counts their pairs as the exact kernels do; entropy ignores them. m/z and precursor m/z that float32 cannot hold (3.4e38 and
    more: the index's sorted m/z and neutral losses are float32) go too, the precursor becoming unknown.
    """
    out = spectra if pipeline is None else _run_pipeline(pipeline, spectra, threads)
    return drop_invalid_peaks(out)


#: m/z at or below this round to 0 in float32 (half float32's smallest subnormal), as the entropy kernels
#: store m/z: they would drop such a peak and renormalise the rest, while the index kept its weight
_F32_ROUNDS_TO_ZERO = float(np.nextafter(np.float32(0), np.float32(1))) / 2
#: float32's largest value: m/z beyond it would be inf (or float32's largest) in the index
F32_MAX = float(np.finfo(np.float32).max)


def drop_invalid_peaks(spectra: Spectra) -> Spectra:
    """``spectra`` without peaks whose m/z is not finite and positive (in float32, beyond its range
    included) or whose intensity is not finite and at least 0, nor zero intensities in spectra left
    without a positive one, and with precursor m/z beyond float32's range made NaN (the same object when
    there are none)."""
    mz = np.asarray(spectra.mz)
    inten = np.asarray(spectra.intensity)
    pmz = np.asarray(spectra.precursor_mz)
    with np.errstate(invalid="ignore"):
        huge = np.abs(pmz) > F32_MAX
        if huge.any():
            spectra = Spectra(spectra.offsets, mz, inten, np.where(huge, np.nan, pmz), spectra.charge,
                              spectra.metadata, validate=False)
        keep = np.isfinite(mz) & (mz > _F32_ROUNDS_TO_ZERO) & (mz <= F32_MAX) & np.isfinite(inten) & (inten >= 0)
    zero = keep & (inten == 0)
    if zero.any():  # zero intensities only in spectra with a positive one left
        seg = np.repeat(np.arange(len(spectra), dtype=np.int64), np.diff(spectra.offsets))
        positive = np.bincount(seg[keep & ~zero], minlength=len(spectra)) > 0
        keep &= ~zero | positive[seg]
    return spectra.keep_peaks(keep)


def _run_pipeline(pipeline, spectra: Spectra, threads: int | None = None) -> Spectra:
    from fastspec.preprocess import Pipeline

    if isinstance(pipeline, Pipeline):
        out = pipeline(spectra, threads=threads)
    else:
        out = pipeline(spectra) if callable(pipeline) else pipeline.apply(spectra)
    kept = None
    if isinstance(out, tuple):  # (spectra, kept mask / kept rows / report) variants
        out, extra = out[0], (out[1] if len(out) > 1 else None)
        if isinstance(extra, np.ndarray) and (extra.dtype == bool or np.issubdtype(extra.dtype, np.integer)):
            kept = extra
    if not isinstance(out, Spectra):
        raise FastspecError(f"preprocessing returned {type(out).__name__}, expected Spectra")
    if len(out) == len(spectra):
        return out
    if kept is None:
        raise FastspecError(f"preprocessing changed the number of spectra ({len(spectra)} -> {len(out)})")
    rows = np.flatnonzero(kept) if kept.dtype == bool else np.asarray(kept, np.int64)
    lengths = np.zeros(len(spectra), dtype=np.int64)
    lengths[rows] = np.diff(out.offsets)
    offsets = np.zeros(len(spectra) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return spectra.with_peaks(offsets, out.mz, out.intensity)


def read_input(source: Any, on_error: str = "skip", progress: bool | None = None,
               input_format: str | None = None) -> tuple[Spectra, dict]:
    """Spectra from a Spectra object, a path or several paths (read as ``input_format``: see the ``format``
    of :func:`fastspec.io.read`), with reader counts.

    Returns
    -------
    spectra : Spectra
    counts : dict
        ``n_read`` (records seen), ``n_rejected`` and ``rejected`` (reason -> count) from the reader;
        for files also ``first_rejected`` (``path:line: reason`` of the first rejected record, or None).
    """
    spectra, paths = sort_input(source, on_error)
    if spectra is not None:
        return spectra, {"n_read": len(spectra), "n_rejected": 0, "rejected": {},
                         "positions": np.arange(len(spectra), dtype=np.int64)}
    from fastspec import io as fio
    from fastspec.io._common import first_rejection

    paths, n_skipped = _expand_directories(paths)
    spectra, report = fio.read([str(p) for p in paths] if len(paths) > 1 else str(paths[0]), format=input_format,
                               on_error=on_error, progress=progress, return_report=True)
    _refuse_empty(report)
    counts = _report_counts(report, len(spectra))
    counts["warnings"] = _read_warnings(report, n_skipped)
    counts["positions"] = _record_positions(report, len(spectra))
    counts["rejected_ids"] = {int(r): i for r, i in zip(getattr(report, "rejected_records", []),
                                                        getattr(report, "rejected_ids", [])) if i is not None}
    counts["rejected_reasons"] = {int(r): why for r, why in zip(getattr(report, "rejected_records", []),
                                                                getattr(report, "rejected_reasons", []))}
    # (path, records) per file read, in read order, so that every record can be traced to its file
    counts["files"] = [(str(r.path), int(r.n_records)) for r in (report.files or [report])]
    counts["first_rejected"] = first_rejection(report)
    counts["report"] = report
    return spectra, counts


def _fill_report(into, counts: dict) -> None:
    """Put the reader's report of one build or append (``counts["report"]``; spectra given in memory: their
    number) into the caller's :class:`~fastspec.io.ReadReport` ``into`` (``report=``), when one was given."""
    if into is None:
        return
    from fastspec.io import ReadReport

    if not isinstance(into, ReadReport):
        raise ParameterError(f"report must be a fastspec.io.ReadReport, got {type(into).__name__}")
    got = counts.get("report")
    if got is None:
        got = ReadReport(n_records=int(counts["n_read"]), n_spectra=int(counts["n_read"]))
    into.absorb(got)
    into.files.extend(got.files or [got])
    # the file(s) and format read, as fastspec.io.read's report names them (absorb adds only counts)
    if got.path is not None:
        had = [] if into.path is None else into.path if isinstance(into.path, list) else [into.path]
        more = got.path if isinstance(got.path, list) else [got.path]
        into.path = had + more if had else got.path
    if got.format is not None:
        into.format = got.format if into.format in (None, got.format) else "mixed"


def _read_warnings(report, n_skipped: int) -> dict[str, int]:
    """The reader's counted oddities, and the files of input directories left out (``n_skipped``)."""
    out = {str(k): int(v) for k, v in (getattr(report, "warnings", None) or {}).items() if v}
    if n_skipped:
        out["files in input directories not read (not spectrum files)"] = n_skipped
    return out


def sort_input(source: Any, on_error: str = "skip") -> tuple[Spectra | None, list | None]:
    """Spectra given in memory (a Spectra, one spectrum ``spectra[i]``, a list of them, matchms spectra)
    as one Spectra, else the paths given (checked to exist, directories not yet expanded): ``(spectra,
    None)`` or ``(None, paths)``; ParameterError for anything else or a bad ``on_error``."""
    if on_error not in ("skip", "raise"):
        raise ParameterError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    from fastspec.spectra import SpectrumView

    if isinstance(source, SpectrumView):  # one spectrum (``spectra[i]``): a set of one
        source = source._parent.take(np.array([source.index], dtype=np.int64))
    source = matchms_to_spectra(source)  # one matchms Spectrum (a set of one), or a list of them
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, SpectrumView) for s in source):
        source = source[0]._parent.take(np.array([s.index for s in source], dtype=np.int64)) \
            if len({id(s._parent) for s in source}) == 1 else Spectra.concat(
                [s._parent.take(np.array([s.index], dtype=np.int64)) for s in source])
    if isinstance(source, (list, tuple)) and any(_is_matchms(s) or isinstance(s, SpectrumView) for s in source):
        # spectra with something else among them (None, say): name that element, not the first spectrum
        kind = "matchms spectra" if any(_is_matchms(s) for s in source) else "spectra (spectra[i])"
        i, odd = next((i, s) for i, s in enumerate(source)
                      if not (_is_matchms(s) if kind == "matchms spectra" else isinstance(s, SpectrumView)))
        raise ParameterError(f"a list of {kind} holds a {type(odd).__name__} at position {i}: give spectra of one "
                             "kind only")
    if isinstance(source, Spectra):
        return source, None
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, Spectra) for s in source):
        return Spectra.concat(list(source)), None
    if isinstance(source, (str, os.PathLike)):
        paths = [source]
    elif isinstance(source, dict) or _is_table(source):  # its keys (column names) would be taken for paths
        raise ParameterError(f"expected a Spectra, matchms spectra, a path or a list of paths, got a "
                             f"{type(source).__name__} (for arrays of peaks, use fastspec.Spectra.from_arrays)")
    elif hasattr(source, "__iter__"):  # a list, a set, Path.glob(...)
        paths = list(source)
        if paths and not isinstance(source, (list, tuple)) and \
                not any(isinstance(p, (str, os.PathLike)) for p in paths):
            # a generator of spectra (matchms' load_from_mgf returns one): as the list of them
            return sort_input(paths, on_error)
    else:
        paths = [source]  # refused just below
    if not paths:
        raise ParameterError("no input given")
    for p in paths:
        if isinstance(p, Spectra):  # among paths
            raise ParameterError("a list of Spectra and paths: give one kind (fastspec.read the files, then "
                                 "Spectra.concat)")
        if not isinstance(p, (str, os.PathLike)):
            raise ParameterError(f"expected a Spectra, matchms spectra, a path or a list of paths, got "
                                 f"{type(p).__name__}")
        if not Path(p).exists():
            raise FileNotFoundError(2, "No such file or directory", str(p))
    return None, paths


def _input_sources(counts: dict) -> list[dict]:
    """The inputs of one read, in read order, covering its ``n_read`` input positions: ``{"path",
    "records", "source"}`` per file read (``source`` "file"), or one entry for spectra given in memory
    ("memory", no path); "unknown" if the file counts do not add up (the readers' own check rules that
    out)."""
    n_read = int(counts["n_read"])
    files = counts.get("files")
    if not n_read:
        return []
    if not files:
        return [{"path": None, "records": n_read, "source": "memory"}]
    if sum(int(n) for _, n in files) != n_read:
        return [{"path": None, "records": n_read, "source": "unknown"}]
    return [{"path": str(p), "records": int(n), "source": "file"} for p, n in files if int(n)]


def _write_inputs(path: Path, inputs: list[dict]) -> None:
    """``inputs.parquet``: one row per input (``Library.input_files``). Paths are stored as the bytes the
    file system gave (``os.fsencode``): a name that is not UTF-8 survives the round trip. A file of its
    own, not a manifest entry: a directory of 100k one-record files (MassBank's record tree) made a
    10 MB manifest, parsed and hashed at every open."""
    import pyarrow.parquet as pq

    table = pa.table({
        "path": pa.array([None if d["path"] is None else os.fsencode(d["path"]) for d in inputs], pa.binary()),
        "records": pa.array([int(d["records"]) for d in inputs], pa.int64()),
        "source": pa.array([d["source"] for d in inputs], pa.string()),
    })
    pq.write_table(table, path, compression="zstd", write_page_checksum=True)


def _is_table(obj) -> bool:
    """A pandas / polars DataFrame: iterated, it gives its column names."""
    return type(obj).__module__.split(".")[0] in ("pandas", "polars") and hasattr(obj, "columns")


def _expand_directories(paths: list) -> tuple[list[str], int]:
    """Input paths with every directory replaced by the spectrum files under it (recursively: a directory's
    files sorted by name, then its subdirectories' in name order; hidden entries and library indexes left
    out; symlinked subdirectories followed, each real directory once; a directory that cannot be listed
    raises :class:`~fastspec.errors.ParseError`), e.g. a clone of MassBank-data with one record per file. A file counts by its extension
    (``.mgf``, ``.msp``, ``.mzML``, ``.parquet``, ... also ``.gz``; an extension with a suffix after ``_``,
    such as ``.msp_NIST``, when the content is of that format; not a backup's, such as ``.mgf_old``) or, with any other name, when its content
    is a MassBank record (``ACCESSION:`` first); others (READMEs, licences, TSV or Parquet tables without peak columns, such
    as sample sheets or hit tables, and JSON files whose first record is no spectrum, such as settings or
    reports) are left out and counted."""
    from fastspec.io._common import EXTENSIONS, sniffed, strip_gz
    from fastspec.io.jsonspec import looks_like_spectra

    out: list[str] = []
    skipped = 0
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            out.append(str(p))
            continue
        if _holds_index(str(p)):
            raise ParseError("is a fastspec library index, not spectra (add spectra to it with `fastspec index "
                             "FILES -o LIB --append` or Library.open(path).append(...); read its spectra with "
                             "Library.open(path).spectra())", str(p))
        found = 0
        # symlinked subdirectories are followed (os.walk follows symlinked files already), each real
        # directory once, so that a link to an ancestor cannot loop; a directory that cannot be listed
        # is an error, not a silent gap in the input
        seen = {os.path.realpath(p)}
        for root, dirs, files in os.walk(p, followlinks=True, onerror=_unlistable):
            keep = []
            for d in sorted(dirs):
                sub = os.path.join(root, d)
                real = os.path.realpath(sub)
                if d.startswith(".") or real in seen or _holds_index(sub):
                    continue
                seen.add(real)
                keep.append(d)
            dirs[:] = keep
            for name in sorted(files):
                if name.startswith("."):
                    continue
                f = os.path.join(root, name)
                ext = os.path.splitext(strip_gz(name)[0])[1].lower()
                # a library's tag after the extension (mzmine's "massbank.msp_NIST", ".msp_RIKEN"), not a
                # backup's ("lib.mgf_old", ".mgf_BAK": the spectra would be read twice)
                base, _, tag = os.path.splitext(strip_gz(name)[0])[1].partition("_")
                base = base.lower()
                if (ext not in EXTENSIONS and base in EXTENSIONS and tag and tag.lower() not in _BACKUP_TAGS
                        and sniffed(f) == EXTENSIONS[base]):
                    ext = base
                if ext not in EXTENSIONS:
                    if sniffed(f) != "massbank" or not _starts_massbank_record(f):
                        skipped += 1
                        continue
                elif EXTENSIONS[ext] in ("tsv", "parquet") and not _spectrum_table(f, EXTENSIONS[ext]):
                    skipped += 1  # a sample sheet or a hit table beside the spectra
                    continue
                elif EXTENSIONS[ext] == "json" and not looks_like_spectra(f):
                    skipped += 1  # a report or settings file beside the spectra
                    continue
                out.append(f)
                found += 1
        if not found:
            raise ParseError("no spectrum file in this directory (MGF, MSP, mzML, mzXML, JSON, MassBank records, ...)", str(p))
    return out, skipped


def _unlistable(err: OSError) -> None:
    raise ParseError(f"cannot list this directory: {err.strerror or err}", err.filename)


def _holds_index(directory: str) -> bool:
    try:
        return (Path(directory) / fmt.MANIFEST).exists()
    except OSError as e:  # a subdirectory that cannot be entered (Python 3.11 raises here)
        raise ParseError(f"cannot read this directory: {e.strerror or e}", directory) from None


#: tags after a spectrum file's extension that name a copy, not a library (``lib.mgf_old``)
_BACKUP_TAGS = ("old", "bak", "backup", "orig", "copy", "save", "saved", "prev", "tmp", "temp", "swp", "new")


def _starts_massbank_record(path: str) -> bool:
    """Whether a file found in an input directory begins as a MassBank record does (``ACCESSION:`` first),
    so that notes or code merely mentioning record tags (``PK$PEAK:``) are left out, not read."""
    import gzip

    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
        if head[:2] == b"\x1f\x8b":  # gzip-compressed: what it holds
            with gzip.open(path, "rb") as fh:
                head = fh.read(4096)
    except (OSError, EOFError):
        return True  # reading it reports why
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").upper().startswith(b"ACCESSION:")


def _spectrum_table(path: str, fmt_name: str) -> bool:
    """Whether a TSV or Parquet file found in an input directory holds peak columns (its header or schema
    only). A table that cannot be read counts as one, so that reading it reports why."""
    from fastspec.io._tables import find_peak_columns

    try:
        if fmt_name == "parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
        else:
            from fastspec.io.tsv import header_names

            names = header_names(path)
    except (FastspecError, OSError, pa.ArrowException):
        return True
    try:
        find_peak_columns(names, path)
    except FastspecError:
        return False
    return True


def _record_positions(report, n_spectra: int) -> np.ndarray:
    """Position of each returned spectrum among all records the readers saw (rejected ones included),
    int64 (n_spectra,), so that input positions count the records of the files."""
    n_read = int(getattr(report, "n_records", n_spectra))
    rejected = np.asarray(getattr(report, "rejected_records", []) or [], dtype=np.int64)
    pos = np.setdiff1d(np.arange(n_read, dtype=np.int64), rejected, assume_unique=False)
    return pos if pos.shape[0] == n_spectra else np.arange(n_spectra, dtype=np.int64)


def _add_counts(a: dict, b: dict) -> dict:
    out = {str(k): int(v) for k, v in a.items()}
    for k, v in b.items():
        out[str(k)] = out.get(str(k), 0) + int(v)
    return out


def _manifest_stamp(path: Path) -> tuple | None:
    """Identity of an index's manifest file (inode, size, mtime); None when it is gone."""
    try:
        st = os.stat(Path(path) / fmt.MANIFEST)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


#: the arrays an append copies into the rebuilt index (``spectra()``, ``input_index``); the rest is rebuilt
_APPEND_READS = ("offsets", "mz", "intensity", "precursor_mz", "charge", "polarity", "input_index")

#: how many times :meth:`Library.open` reads an index that another process is swapping meanwhile
_OPEN_TRIES = 5


def _swapping(path: Path, stamp: tuple | None) -> bool:
    """Whether the index at ``path`` is being swapped by a rebuild or an append: its manifest is not the
    one stamped before reading (``stamp``), or the directory is gone while the swap's temporary or the
    previous index moved aside exists beside it."""
    now = _manifest_stamp(path)
    if now != stamp:
        return True
    if now is not None:
        return False
    parent = path.parent if str(path.parent) else Path(".")
    name = path.name
    try:
        return any(e.startswith((aside_prefix(name), temporary_prefix(name))) for e in os.listdir(parent))
    except OSError:
        return False


def _refuse_empty(report, blank_ok: bool = False) -> None:
    """A file in which the reader found no record at all is an error, not an empty input: a wrong format,
    encoding or a typo (``BEGIN_IONS``) would otherwise build an empty library or search nothing.
    ``blank_ok``: a file in which the reader noted nothing else either (empty, blank lines only, an empty
    table) is let through (``fastspec convert``: an empty input gives an empty output); one with lines
    outside records, global parameters or MS1 scans only is not."""
    files = getattr(report, "files", None) or [report]
    for f in files:
        _refuse_other_format(f)
        if blank_ok and not any((getattr(f, "warnings", None) or {}).values()):
            continue
        if getattr(f, "n_records", 1) == 0:
            notes = ", ".join(f"{k}: {v}" for k, v in (getattr(f, "warnings", None) or {}).items() if v)
            from fastspec.io._common import other_format

            fmt, path = getattr(f, "format", None), str(getattr(f, "path", "") or "")
            # an MGF file named .msp (or the other way round): what its first bytes look like
            other = other_format(path, fmt) if path else None
            raise ParseError(f"no spectrum records found (read as {fmt or 'unknown format'}"
                             f"{'; ' + notes if notes else ''})"
                             + (f"; {_other_format_advice(other)}" if other
                                else "; is it the format and encoding its name says?"), path or None)


def _refuse_other_format(f) -> None:
    """A file whose every record was rejected and whose first bytes say it is another format (an MGF file
    named ``.msp``, Parquet named ``.mgf``) is an error, whatever ``on_error``: its records were never
    records, and a query run would otherwise end with a table of rejected rows and exit 0."""
    n_rec, n_spec = int(getattr(f, "n_records", 0) or 0), int(getattr(f, "n_spectra", 0) or 0)
    path, fmt = str(getattr(f, "path", "") or ""), getattr(f, "format", None)
    first = next(iter(getattr(f, "rejected", None) or []), None)
    if n_rec == 0 or n_spec or not path or first is None:
        return
    from fastspec.io._common import is_parse_failure, other_format, position_unit

    other = other_format(path, fmt) if is_parse_failure(first.reason) else None
    if other:
        where = f"; the first at {position_unit(fmt)} {first.line}: {first.reason}" if first.line else ""
        what = "the one record was" if n_rec == 1 else f"all {n_rec} records were"
        raise ParseError(f"{what} rejected (read as {fmt}{where}); {_other_format_advice(other)}", path)


def _other_format_advice(other: str) -> str:
    return f"its content looks like {other}: give it the extension of that format (or read it as format {other})"


def _report_counts(report, n_spectra: int) -> dict:
    if report is None:
        return {"n_read": n_spectra, "n_rejected": 0, "rejected": {}}
    get = (lambda k, d=None: report.get(k, d)) if isinstance(report, dict) else (lambda k, d=None: getattr(report, k, d))
    n_rej = int(get("n_rejected", 0) or 0)
    reasons = (get("counts_by_reason", None) or get("reasons", None) or get("rejected_reasons", None)
               or get("rejected", None) or {})
    if isinstance(reasons, dict):
        reasons = {str(k): int(v) for k, v in reasons.items()}
    else:  # a list of (record, reason) / objects with a .reason
        counted: dict[str, int] = {}
        for r in reasons:
            why = getattr(r, "reason", None) or (r.get("reason") if isinstance(r, dict) else None)
            if why is None and isinstance(r, (tuple, list)) and r:
                why = r[-1]
            why = str(why or "unreadable record")
            counted[why] = counted.get(why, 0) + 1
        reasons = counted
    n_read = int(get("n_records", None) or get("n_read", None) or (n_spectra + n_rej))
    if not reasons and n_rej:
        reasons = {"unreadable record": n_rej}
    return {"n_read": n_read, "n_rejected": n_rej, "rejected": reasons}


def canonical_formulas(values: Sequence) -> list[str | None]:
    """Canonical Hill formulas (None when missing or unparsable)."""
    try:
        from fastspec.chem.formula import canonical_formulas as cf
    except ImportError:  # pragma: no cover - chem helper not present
        return [None if v in (None, "") else str(v).strip() for v in values]
    return list(cf(list(values)))


def formulas_or_from_structure(formulas: Sequence, smiles, inchi=None) -> tuple[list[str | None], int, int]:
    """Canonical Hill formulas, a missing or unparsable one taken from the record's SMILES, else from its
    InChI (RDKit's formula of the structure, see :func:`fastspec.fingerprints.formulas_from_smiles`; as the
    evaluation lab's :meth:`fastspec.baseline.LabData.build` does): GNPS MGF exports and many in-house
    libraries give a structure (often only an InChI, with ``SMILES=N/A``) but no formula, which would leave
    formula mode nothing to match.

    ``smiles``, ``inchi``: lists or Arrow arrays (only the rows without a formula are read), or None. Without
    RDKit (a dependency, missing only from a broken install) formulas stay missing. Returns the formulas and
    how many came from a SMILES and from an InChI.
    """
    out = canonical_formulas(formulas)
    counts = []
    for structures, derive in ((smiles, "formulas_from_smiles"), (inchi, "formulas_from_inchi")):
        counts.append(_derive_formulas(out, structures, derive))
    return out, counts[0], counts[1]


def _derive_formulas(out: list, structures, derive: str) -> int:
    """Fill the None entries of ``out`` in place from ``structures`` through ``fastspec.fingerprints.<derive>``;
    returns how many were filled."""
    missing = [i for i, f in enumerate(out) if f is None]
    if not missing or structures is None:
        return 0
    if isinstance(structures, (pa.Array, pa.ChunkedArray)):
        vals = structures.take(pa.array(missing, pa.int64())).to_pylist()
    else:
        vals = [structures[i] for i in missing]
    rows = [(i, str(s).strip()) for i, s in zip(missing, vals) if s is not None and str(s).strip()]
    if not rows:
        return 0
    try:
        from fastspec import fingerprints

        derived = canonical_formulas(getattr(fingerprints, derive)([s for _, s in rows]))
    except FastspecError:  # no RDKit: nothing derived
        return 0
    n = 0
    for (i, _), f in zip(rows, derived):
        if f is not None:
            out[i], n = f, n + 1
    return n


def normalize_adducts(values: Sequence) -> list[str | None]:
    try:
        from fastspec.chem.adducts import normalize_adduct
    except ImportError:  # pragma: no cover
        return [None if v in (None, "") else str(v).strip() for v in values]
    out = []
    cache: dict = {}
    for v in values:
        if v is None or v == "":
            out.append(None)
            continue
        if v not in cache:
            try:
                cache[v] = normalize_adduct(v)
            except FastspecError:
                cache[v] = None
        out.append(cache[v])
    return out


def _encode(values: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Codes (int32, -1 for None) and sorted unique keys (unicode array)."""
    keys = sorted({v for v in values if v is not None})
    lut = {k: i for i, k in enumerate(keys)}
    codes = np.fromiter((lut[v] if v is not None else -1 for v in values), dtype=np.int32, count=len(values))
    karr = np.array(keys, dtype=str) if keys else np.zeros(0, dtype="<U1")
    return codes, karr


def check_threads(threads):
    """:func:`fastspec.kernels._config.check_threads` (imported when called: numba is not for ``info``)."""
    from fastspec.kernels._config import check_threads as check

    return check(threads)


def _column_strings(table: pa.Table, name: str) -> list:
    if name not in table.column_names:
        return [None] * table.num_rows
    col = table.column(name)
    vals = col.to_pylist()
    return [None if v is None or (isinstance(v, str) and not v.strip()) else str(v) for v in vals]


# ====================================================================================== the library
class Library:
    """A library index opened from disk. Create one with :meth:`build`, load it with :meth:`open`.

    Attributes
    ----------
    path : Path
    manifest : dict
        Build parameters, counts and file checksums.

    Notes
    -----
    Arrays are memory-mapped and loaded on first use; opening reads only the manifest and a few KiB of
    every file (sizes and edge checksums). Library rows are numbered in input order, skipping rejected
    spectra.
    """

    def __init__(self, path: Path, manifest: dict):
        # absolute: an append swaps the directory, and "." (opened from inside it) would then name the old one
        self.path = absolute_path(path)
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray] = {}
        self._cache: dict[str, Any] = {}
        # scratch buffers searches write into, lent to one search at a time (see take_scratch)
        self._scratch: dict[str, list] = {}
        self._generation = 0  # bumped when the library changes: scratch lent before is not taken back
        self._lock = threading.Lock()
        self._metadata_lock = threading.Lock()  # see metadata()
        # searches running on this object (per thread, nested calls counted once) and an append in progress:
        # append waits for the searches, and searches started meanwhile wait for it (see _in_use)
        self._use = threading.Condition(threading.Lock())
        self._users = 0
        self._changing = False
        self._user_depth = threading.local()
        # which manifest this object read: files are loaded lazily, and another process appending to or
        # rebuilding the index swaps the directory; loading from the new one would mix two indexes
        self._stamp = _manifest_stamp(self.path)
        self._adopt_pending = None  # the stamp of an index this object's interrupted append swapped in
        self._adopt_lock = threading.Lock()

    @contextlib.contextmanager
    def _in_use(self):
        """Held by a search (``fastspec.search.search``, ``search_to_file``) for its whole run.

        :meth:`append` swaps the object's arrays and caches for the new index's; a search still running on
        the old ones would write entries derived from them (filter codes, bitmaps sized for the old library)
        into the new cache, and every later search on the object would read them. So an append waits until
        the searches running on this object are done, and a search started during an append waits for it.
        Nested calls in one thread (search_to_file calling search) count once."""
        depth = getattr(self._user_depth, "n", 0)
        if depth == 0:
            with self._use:
                while self._changing:
                    self._use.wait()
                if self._users == 0:
                    # an append of this object was interrupted after its swap: the search runs on the
                    # appended index, taken on before anything of it is read
                    self._adopt_if_pending()
                self._users += 1
        self._user_depth.n = depth + 1
        try:
            yield
        finally:
            self._user_depth.n = depth
            if depth == 0:
                with self._use:
                    self._users -= 1
                    if self._users == 0:
                        self._use.notify_all()

    @contextlib.contextmanager
    def _changing_index(self):
        """Held by :meth:`append`: waits for the searches running on this object, keeps new ones waiting."""
        if getattr(self._user_depth, "n", 0):
            raise FastspecError("append cannot run inside a search of the same Library")
        with self._use:
            while self._changing:
                self._use.wait()
            self._changing = True
        try:  # (an interrupt while waiting for the searches must not leave the object closed to searches)
            with self._use:
                while self._users:
                    self._use.wait()
            yield
        finally:
            with self._use:
                self._changing = False
                self._use.notify_all()

    def _check_unchanged(self) -> None:
        """Refuse to load a file lazily once the index on disk is no longer the one this object opened."""
        now = _manifest_stamp(self.path)
        if now != self._stamp:
            if now is None and not self.path.exists():  # deleted, or moved aside by a rebuild killed mid-swap
                fmt.read_manifest(self.path)  # raises: missing, with the aside hint when there is one
            raise IndexChangedError(f"{self.path} was rebuilt or appended to (by another process?) since it was "
                                    "opened: open it again")

    # ------------------------------------------------------------------------------ scratch
    def take_scratch(self, name: str, make, fits=None) -> tuple[Any, int]:
        """Borrow a scratch object (a search workspace) for one search: a free one of kind ``name`` for
        which ``fits(obj)`` holds, else ``make()``. Returns it with the pool's generation; give both
        back with :meth:`give_scratch`.

        Searches write into their workspaces, so two searches running at once on one Library (Python
        threads) must never share one; lending them out keeps concurrent searches correct, and a
        single-threaded caller still reuses the same buffers call after call.
        """
        with self._lock:
            pool = self._scratch.setdefault(name, [])
            for i, obj in enumerate(pool):
                if fits is None or fits(obj):
                    return pool.pop(i), self._generation
            generation = self._generation
        return make(), generation

    def give_scratch(self, name: str, obj, generation: int, keep: int = 2) -> None:
        """Return a borrowed scratch object; at most ``keep`` free ones of each kind stay (the most
        recently returned: the caller's current settings). One lent before the library changed
        (:meth:`append`) is dropped: it is sized for the old library."""
        with self._lock:
            if generation != self._generation:
                return
            pool = self._scratch.setdefault(name, [])
            pool.append(obj)
            del pool[:-keep]

    def _remember(self, key: str, value, family: str, setting, keep: int):
        """Keep ``value`` in the object's cache under ``key``, derived for one ``setting`` (weight powers, a
        query preparation) of a ``family`` of such entries, of which those for the last ``keep`` settings
        stay; returns ``value``. Settings a caller varies call after call (a loop over intensity powers:
        ~14 bytes per library peak each, hundreds of MB at 2.4M) must not pile up while the library is open.
        """
        with self._lock:
            settings = self._cache.setdefault(("settings", family), {})  # oldest first
            keys = settings.pop(setting, set())
            keys.add(key)
            settings[setting] = keys
            while len(settings) > keep:
                for old in settings.pop(next(iter(settings))):
                    self._cache.pop(old, None)
            self._cache[key] = value
        return value

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        spectra_or_paths: Any,
        path: "str | os.PathLike",
        *,
        preprocess: Any = _DEFAULT,
        faiss: bool = True,
        on_error: str = "skip",
        threads: int | None = None,
        progress: bool | None = None,
        overwrite: bool = False,
        faiss_params: dict | None = None,
        allow_empty: bool = True,
        input_format: str | None = None,
        report: Any = None,
    ) -> "Library":
        """Index spectra into a new library directory.

        Parameters
        ----------
        spectra_or_paths : Spectra, list of matchms ``Spectrum``, path, directory or list of paths
            Anything :func:`fastspec.io.read` accepts, or Spectra; a directory stands for the spectrum files
            in it (other files are skipped and counted).
        path : str or PathLike
            Index directory to create (e.g. ``lib.fastspec``). Written atomically: a temporary sibling
            directory is renamed into place when everything is written.
        preprocess : "default", None, Pipeline, dict or str
            Peak preprocessing applied to the library (and, at search time, to the queries);
            ``None`` keeps the peaks as read (only invalid peaks dropped: see :func:`apply_pipeline`).
        faiss : bool
            Also build a FAISS index over hashed spectrum vectors (``engine="faiss"``, and the first
            thresholds of open, analog and hybrid search): IVF with SQ8 codes, or an exhaustive flat index
            below ``flat_below`` spectra.
        on_error : {"skip", "raise"}
            Unreadable records are skipped and counted, or raise.
        threads : int, optional
            numba / faiss threads.
        progress : bool, optional
            tqdm progress on stderr (default: only when stderr is a terminal).
        overwrite : bool
            Replace an existing index at ``path``.
        faiss_params : dict, optional
            FAISS options (:data:`fastspec.vectors.DEFAULTS`): ``dim`` (256), ``bin_width`` (1.0 Da),
            ``offset``, ``intensity_power`` (0.5), ``index`` (``"IVF{nlist},SQ8"``), ``nlist`` (~sqrt(n)),
            ``n_train``, ``nprobe`` (16: the engine's default), ``seed``, ``flat_below`` (20,000),
            ``theta_index``, ``theta_nlist``; unknown names raise ParameterError.
        allow_empty : bool
            With False, input whose every record is rejected raises instead of writing an empty library
            (``fastspec index``: a wrong file, not a library to append to later).
        input_format : str, optional
            Format of the input files, as ``format`` of :func:`fastspec.io.read` (default: from each file's
            extension, else sniffed; a pipe such as ``/dev/stdin`` needs it).
        report : fastspec.io.ReadReport, optional
            Filled with the reader's report: records read, spectra, and each rejected record's file, line and
            reason (the first 10,000, :data:`fastspec.io._common.MAX_LISTED`; :attr:`~fastspec.io.ReadReport.files`
            per file), and the file(s) and format read. Spectra the
            build itself leaves out (no peaks after preprocessing, MS1) are counted in :attr:`rejected` and
            named (file, record, id: the first 100 per reason) in :attr:`left_out`.

        Returns
        -------
        Library

        Raises
        ------
        FastspecError
            ``allow_empty=False`` and no spectrum left to index (nothing is written; ``path`` is left as
            it was).

        Notes
        -----
        Every input spectrum is indexed or counted in ``manifest["counts"]["rejected"]`` with its reason:
        unreadable records, spectra left without peaks by preprocessing, MS1 records (``ms_level``
        1, as SIRIUS and MZmine MGF exports interleave them with the MS/MS spectra) and MSn records
        (``ms_level`` 3 or more, as in mzmine's MSn library exports: their precursor is a fragment).
        """
        check_threads(threads)
        _check_flags(overwrite=overwrite, faiss=faiss, allow_empty=allow_empty)
        if faiss_params:
            from fastspec.vectors import DEFAULTS as _FAISS_DEFAULTS

            unknown = sorted(set(faiss_params) - set(_FAISS_DEFAULTS))
            if unknown:  # a misspelt key would be ignored, and recorded as if it had been used
                raise ParameterError(f"unknown faiss_params {', '.join(map(repr, unknown))}; known: "
                                     f"{', '.join(_FAISS_DEFAULTS)}")
            if faiss:
                from fastspec.vectors import check_params

                check_params(faiss_params)
        if Path(path).exists() and not overwrite:  # before reading anything
            raise IndexFormatError(f"{path} already exists (use overwrite=True / --overwrite)")
        if not overwrite and not Path(path).exists() and fmt.aside_index(path) is not None:
            # a swap killed between its renames: a new build would complete, and its cleanup delete the old index
            raise IndexFormatError(f"{path} is missing, but an interrupted rebuild or append left the previous index "
                                   f"at {fmt.aside_index(path)}: rename it back to use it, or build anew with "
                                   "overwrite=True / --overwrite (which deletes it)")
        target = Path(path)
        absolute = absolute_path(path)  # "." from inside the index it replaces: gone after the swap
        inside = fmt.enclosing_index(absolute.parent)
        if inside is not None:  # a rebuild or append of that index would delete this one
            raise ParameterError(f"{path} is inside the library index {inside}: choose another path")
        if target.is_dir() and not fmt.is_index_dir(target, damaged=True) and any(target.iterdir()):
            raise IndexFormatError(f"refusing to overwrite {target}: it is a non-empty directory that is not a "
                                   "library index")
        if target.exists() and not target.is_dir():  # e.g. the input spectrum file itself, named twice
            raise IndexFormatError(f"refusing to overwrite {target}: it is a file, not a library index")
        if target.is_dir():
            fmt.refuse_read_only(target, "overwrite")
        prog = _Progress(progress, total=7, desc="index")
        try:
            with interrupts():  # (a Ctrl-C inside a numba call: KeyboardInterrupt, not SystemError)
                pipeline = resolve_pipeline(preprocess)
                spectra, counts = read_input(spectra_or_paths, on_error, progress, input_format)
                _fill_report(report, counts)
                prog.step("preprocess")
                processed = apply_pipeline(pipeline, spectra, threads)
                _build_index(absolute, processed, counts, pipeline_config(pipeline), faiss=faiss,
                             faiss_params=faiss_params, threads=threads, overwrite=overwrite, prog=prog,
                             input_index=counts["positions"], n_input=int(counts["n_read"]),
                             allow_empty=allow_empty, inputs=_input_sources(counts))
        finally:
            prog.close()
        return cls.open(absolute)

    @classmethod
    def open(cls, path: "str | os.PathLike", *, verify: bool = False) -> "Library":
        """Open an index directory (cheap: manifest, file sizes and edge checksums).

        Parameters
        ----------
        path : str or PathLike
            The index directory (``lib.fastspec``).
        verify : bool
            Also check every file's full checksum (:meth:`verify`; reads the whole index).

        Raises
        ------
        IndexFormatError
            Not an index, wrong format version, missing/truncated/corrupted files.
        FileNotFoundError
            ``path`` does not exist.
        """
        path = Path(path)
        for attempt in range(_OPEN_TRIES):
            stamp = _manifest_stamp(path)  # before reading it: a swap in between is then caught on first use
            try:
                manifest = fmt.read_manifest(path)
                fmt.check_files(path, manifest)
            except (IndexFormatError, OSError):
                # an append or rebuild in another process swapped the directory while this one read the old
                # manifest and checked the new files (or found neither, between its two renames): read again
                if attempt + 1 < _OPEN_TRIES and _swapping(path, stamp):
                    time.sleep(0.01 * (attempt + 1))
                    continue
                raise
            if attempt + 1 < _OPEN_TRIES and _manifest_stamp(path) != stamp:  # swapped just after: the new one
                continue
            break
        lib = cls(path, manifest)
        lib._stamp = stamp
        if verify:
            lib.verify()
        return lib

    def verify(self, progress: bool | None = None) -> None:
        """Check the full checksum of every file; raises IndexFormatError on a mismatch."""
        prog = _Progress(progress, total=len(self.manifest["files"]), desc="verify")
        try:
            self._check_unchanged()  # an index swapped in since the open is not this manifest's: not damage
            try:
                fmt.verify_files(self.path, self.manifest, progress=lambda name: prog.step(name))
            except (IndexFormatError, OSError):
                self._check_unchanged()  # swapped while verifying: say so, not "corrupted"
                raise
            self._check_unchanged()  # (its files checked may have been the swapped-in index's)
        finally:
            prog.close()

    def append(self, spectra_or_paths: Any, *, on_error: str = "skip", threads: int | None = None,
               progress: bool | None = None, allow_empty: bool = True, input_format: str | None = None,
               report: Any = None) -> "Library":
        """Add spectra (preprocessed with the library's recorded pipeline); rebuilds the index atomically.

        New spectra get the next library rows. Returns ``self``, refreshed.

        Parameters
        ----------
        spectra_or_paths : Spectra, list of matchms ``Spectrum``, path, directory or list of paths
            As for :meth:`build`.
        on_error : {"skip", "raise"}
            Unreadable records are skipped and counted (added to the index's rejected counts), or raise.
        threads : int, optional
            numba / faiss threads.
        progress : bool, optional
            tqdm progress on stderr (default: only when stderr is a terminal).
        allow_empty : bool
            With False, input whose every record is rejected raises instead of adding only to the
            rejected counts (``fastspec index --append``: a wrong file).
        input_format : str, optional
            As for :meth:`build`.
        report : fastspec.io.ReadReport, optional
            As for :meth:`build`.

        Raises
        ------
        IndexFormatError
            The index changed on disk since it was opened, or another append or rebuild of it is running
            (in another process, or another thread, on this object or another).
        FastspecError
            ``allow_empty=False`` and no spectrum of the input left to add (the index is unchanged).

        Notes
        -----
        The input is read first; then the append waits for the searches running on this object and
        searches started meanwhile wait for it (see ``_in_use``).
        """
        check_threads(threads)
        _check_flags(allow_empty=allow_empty)
        fmt.refuse_read_only(self.path, "append to")
        prog = _Progress(progress, total=7, desc="append")
        try:
            # read before anything is held: a generator given as input may search this very library
            spectra, counts = read_input(spectra_or_paths, on_error, progress, input_format)
            _fill_report(report, counts)
            # the file lock is held until the rebuilt index is in place: another append (or rebuild)
            # started meanwhile from the same index would otherwise swap its own result in and lose one of
            # the two; it is taken (or refused) before waiting for this object's searches
            with interrupts(), fmt.index_lock(self.path, wait=False, busy="append"), self._changing_index():
                self._check_unchanged()
                before = self._stamp
                try:
                    self._append(spectra, counts, threads, prog, allow_empty)
                    now = _manifest_stamp(self.path)
                    self._adopt(now)
                except BaseException:
                    # an error (a Ctrl-C) after the appended index was swapped in, even while this object
                    # reopens it: the object takes it on (now, else at its next search or load:
                    # _adopt_if_pending), instead of refusing every later call as changed "by another process".
                    # Only that swap: the index lock keeps other writers out until here, so a changed stamp is
                    # this append's, and a later swap (another process) is refused as ever. Pending only from
                    # here on: while the append runs, a concurrent load must still refuse a swapped index
                    now = _manifest_stamp(self.path)
                    if now is not None and now != before:
                        self._adopt_pending = now
                        try:
                            self._adopt_if_pending()
                        except BaseException:  # noqa: BLE001 - the append's own error matters; finished on next use
                            pass
                    raise
        finally:
            prog.close()
        return self

    def _adopt_if_pending(self) -> None:
        """Before loading anything: take on the index an interrupted append of this object swapped in (the
        stamp it left pending), if that is still the index on disk; a later swap is then refused as ever."""
        if self._adopt_pending is None:  # (the usual case, without the lock)
            return
        with self._adopt_lock:  # one thread adopts; the others find nothing pending
            pending = self._adopt_pending
            if pending is None:
                return
            if _manifest_stamp(self.path) == pending:
                self._adopt(pending)
            self._adopt_pending = None

    def _adopt(self, stamp: tuple | None) -> None:
        """Take on the index at :attr:`path` whose manifest stamp is ``stamp`` (this object's own swap)."""
        if stamp is None or stamp == self._stamp:
            return
        fresh = Library.open(self.path)
        self.manifest = fresh.manifest
        self._stamp = fresh._stamp
        self._release()

    def _append(self, spectra, counts, threads, prog, allow_empty: bool = True) -> None:
        pipeline = self.pipeline
        prog.step("preprocess")
        new = apply_pipeline(pipeline, spectra, threads)
        old = self.spectra(metadata=True)
        old_counts = self.manifest["counts"]
        old_input = self.input_index
        if old_input is None:
            raise IndexFormatError(f"{self.path} predates input positions and has rejected spectra: rebuild it "
                                   "to append (the positions of its input spectra are unknown)")
        # the old spectra are copied into the rebuilt index, whose fresh checksums would vouch for them: a
        # byte flipped inside one of the files they came from (open's edge checksums miss it) stops the
        # append instead of being laundered (the metadata's Parquet pages carry checksums of their own)
        fmt.verify_files(self.path, self.manifest, names={f"{name}.npy" for name in _APPEND_READS})
        n_input = int(old_counts.get("n_input", len(self)))
        input_index = np.concatenate([np.asarray(old_input, np.int64), n_input + counts["positions"]])
        merged = Spectra.concat([old, new])
        n_old = len(old)
        reasons = _add_counts(old_counts.get("rejected", {}), counts["rejected"])
        total = {
            "first_rejected": counts.get("first_rejected"),
            "n_read": int(old_counts["n_read"]) + counts["n_read"],
            "n_rejected": int(old_counts["n_rejected"]) + counts["n_rejected"],
            "rejected": reasons,
            "read_warnings": _add_counts(old_counts.get("read_warnings") or {}, counts.get("warnings") or {}),
        }
        build = self.manifest["build"]
        if "faiss_requested" in build:
            faiss_on, params = build["faiss_requested"] is not None, dict(build["faiss_requested"] or {})
        else:  # written before the request was recorded
            from fastspec.vectors import requested_params

            faiss_on = build.get("faiss") is not None
            params = requested_params(build.get("faiss"), len(self))
        self._release()
        _build_index(self.path, merged, total, self.manifest["build"]["preprocess"], faiss=faiss_on,
                     faiss_params=params or None, threads=threads, overwrite=True, prog=prog,
                     already_valid=n_old, appended=True, created=self.manifest.get("created"),
                     input_index=input_index, n_input=n_input + int(counts["n_read"]),
                     inputs=self.input_files + _input_sources(counts), allow_empty=allow_empty,
                     appended_to=old_counts)

    def close(self) -> None:
        """Release the memory-mapped arrays, FAISS indexes and caches now (about 10-30 file descriptors
        once searched), rather than at garbage collection: a program opening many libraries would run out
        of descriptors. The library stays usable: a later search maps what it needs again. Arrays a
        caller still holds (``lib.array(...)``) keep their mapping. Also ``with Library.open(p) as lib:``."""
        self._release()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _release(self) -> None:
        # all at once under the lock: a load that began before stores its result only while the generation
        # it began under holds (_keep), never into the fresh caches
        with self._lock:
            self._arrays = {}
            self._cache = {}
            self._scratch = {}
            self._generation += 1

    def _keep(self, where: str, key: str, value, generation: int) -> bool:
        """Store a loaded ``value`` in ``self._arrays`` / ``self._cache`` (``where``) unless the object took
        on another index since the load began (its ``generation``: an append of this object, from another
        thread); False then, and the caller loads again from the index now open."""
        with self._lock:
            if self._generation != generation:
                return False
            getattr(self, where)[key] = value
            return True

    # ------------------------------------------------------------------------------ properties
    def __len__(self) -> int:
        self._adopt_if_pending()  # an interrupted append of this object: its count
        return int(self.manifest["counts"]["n_spectra"])

    @property
    def n_spectra(self) -> int:
        return len(self)

    @property
    def n_rejected(self) -> int:
        return int(self.manifest["counts"]["n_rejected"])

    @property
    def input_index(self) -> np.ndarray | None:
        """Position of each library row among the input spectra, int64 (n,).

        Positions count the spectra given to :meth:`build` (a ``Spectra``, or every record of the input
        files in order, those the readers rejected included), continued by each :meth:`append`. They
        differ from the row numbers once a record or spectrum was rejected (unparsable, or no peak left
        after preprocessing). One approximation: a TSV row the CSV parser cannot split at all is
        numbered before the other rows of its block.
        ``None`` for an index written before positions were recorded that rejected spectra (without
        rejections the positions are the rows).
        """
        if "input_index.npy" in self.manifest["files"]:
            return self.array("input_index")
        if int(self.manifest["counts"].get("n_rejected", 0)) == 0:
            return np.arange(len(self), dtype=np.int64)
        return None

    @property
    def input_files(self) -> list[dict]:
        """The inputs the library was built from, in input order, continued by each :meth:`append`: one
        ``{"path", "records", "source"}`` per file read (``source`` "file", ``path`` as given, so a
        relative path is relative to the working directory of the build), per batch of spectra given in
        memory ("memory", no path), or "unknown" (an index written before inputs were recorded). The
        records add up to the input positions of :attr:`input_index`."""
        cached = self._cache.get("input files")
        if cached is None:
            self._adopt_if_pending()
            generation = self._generation
            if INPUTS_FILE in self.manifest["files"]:
                import pyarrow.parquet as pq

                self._check_unchanged()
                with self._parquet_errors(INPUTS_FILE):
                    t = pq.read_table(self.path / INPUTS_FILE, page_checksum_verification=True)
                    cols = [t.column(c).to_pylist() for c in ("path", "records", "source")]
                cached = [{"path": None if p is None else os.fsdecode(p), "records": int(n), "source": src}
                          for p, n, src in zip(*cols)]
            else:
                counts = self.manifest["counts"]
                n = int(counts.get("n_input", counts.get("n_read", len(self))))
                cached = [{"path": None, "records": n, "source": "unknown"}] if n else []
            if not self._keep("_cache", "input files", cached, generation):
                return self.input_files
        return [dict(d) for d in cached]

    def input_file(self, rows: np.ndarray) -> list:
        """The input file of library ``rows`` (int array): path strings, None for spectra given in memory or
        of unknown source."""
        rows = _as_rows(rows, len(self))
        inp, files = self.input_index, self.input_files
        if inp is None or not any(d["path"] is not None for d in files):
            return [None] * rows.shape[0]
        ends = np.cumsum([d["records"] for d in files])
        which = np.searchsorted(ends, np.asarray(inp)[rows], side="right")
        return [files[w]["path"] if w < len(files) else None for w in which.tolist()]

    @property
    def left_out(self) -> list[dict]:
        """Spectra read but not indexed (MS1 or MSn records, no peaks left after preprocessing), the first
        :data:`LEFT_OUT_EXAMPLES` per reason: ``{"path", "record", "input", "id", "reason"}``, ``record`` the
        1-based number of the record in its file (the readers' own rejections, with their lines, are in the
        read report), ``input`` its input position (:attr:`input_index`), ``path`` None for spectra given in
        memory. Indexes built before 2026-12-07 list none."""
        found = self.manifest["counts"].get("left_out") or []
        files = self.input_files
        ends = np.cumsum([d["records"] for d in files], dtype=np.int64)
        out = []
        for d in found:
            w = int(np.searchsorted(ends, int(d["input"]), side="right"))
            known = w < len(files) and files[w]["source"] == "file"
            start = int(ends[w - 1]) if w else 0
            out.append({"path": files[w]["path"] if known else None,
                        "record": int(d["input"]) - start + 1 if known else None,
                        "input": int(d["input"]), "id": d.get("id"), "reason": d["reason"]})
        return out

    @property
    def rejected(self) -> dict[str, int]:
        """Rejected input spectra by reason."""
        return dict(self.manifest["counts"].get("rejected", {}))

    @property
    def format_version(self) -> int:
        return int(self.manifest["format_version"])

    @property
    def preprocess_config(self) -> dict | None:
        return self.manifest["build"]["preprocess"]

    @property
    def pipeline(self):
        """The preprocessing Pipeline the library was built with (None: peaks used as read)."""
        cfg = self.preprocess_config
        if cfg is None:
            return None
        if "pipeline" not in self._cache:
            from fastspec.preprocess import Pipeline

            self._cache["pipeline"] = Pipeline.from_config(cfg)
        return self._cache["pipeline"]

    @property
    def has_faiss(self) -> bool:
        return "faiss.index" in self.manifest["files"]

    @property
    def has_faiss_theta(self) -> bool:
        """Whether the index holds the FAISS threshold index (:data:`fastspec._indexfmt.THETA_FILE`)."""
        return fmt.THETA_FILE in self.manifest["files"]

    @property
    def window_block(self) -> int:
        """Spectra per block of the precursor-block index (``wblk_*``; 0: the index has none)."""
        if not self.has_array("wblk_loc"):
            return 0
        return int(self.manifest["build"].get("window_block", 0))

    def has_array(self, name: str) -> bool:
        """Whether the index holds the array ``name`` (optional structures: see the module docstring)."""
        return f"{name}.npy" in self.manifest["files"]

    def array(self, name: str) -> np.ndarray:
        """A memory-mapped index array by file stem (e.g. ``"frag_mz"``)."""
        arr = self._arrays.get(name)
        if arr is None:
            self._adopt_if_pending()  # (first: the manifest may be that of this object's interrupted append)
            generation = self._generation
            self._check_unchanged()
            entry = self.manifest["files"].get(f"{name}.npy")
            if entry is None:
                raise IndexFormatError(f"library index {self.path} has no array {name!r}")
            # a plain ndarray view of the memory map: np.memmap's subclass hooks make fancy indexing slow;
            # always read-only (empty arrays are loaded eagerly), so numba kernels see one array type and
            # compile once
            try:
                arr = _readonly(np.asarray(fmt.load_array(self.path, name, entry)))
            except (IndexFormatError, OSError):
                self._check_unchanged()  # swapped between the check and the load: say so, not "corrupted"
                raise
            bad = self._bad_values(name, arr)
            self._check_unchanged()  # the file mapped may be the swapped-in index's
            if bad:
                raise self._corrupted(f"{name} {bad}")
            if not self._keep("_arrays", name, arr, generation):  # this object took on its append meanwhile
                return self.array(name)
        return arr

    def _corrupted(self, what: str) -> IndexFormatError:
        """The error for stored values found damaged when used: a byte flipped inside a file passes the
        open-time edge checksums, and only the full checksums of ``fastspec info --verify`` tell.

        Parameters
        ----------
        what : str
            What was found, one line (e.g. ``"the largest m/z in mz is nan, ..."``).

        Returns
        -------
        IndexFormatError
            To raise; its message names the index and the command that checks it.
        """
        return IndexFormatError(f"library index {self.path} looks corrupted: {what}; check it with "
                                f"`fastspec info --verify {self.path}`, or rebuild it")

    def _bad_values(self, name: str, arr: np.ndarray) -> str | None:
        """What is wrong with the values of an array that addresses others (offsets, row and scan ids,
        codes), checked once when it is first loaded: a flipped byte in the middle of a file passes the
        open-time edge checksums, and the kernels index with these values unchecked (a crash, not an
        error). One pass over the file, read in chunks rather than through the map, so that the check
        adds nothing to resident memory (2.4M library, files in the page cache: 30-60 ms for the fragment
        index's ids, a few ms for per-spectrum arrays; from a cold cache the first analog search reads
        ~370 MB more than it would touch, +1.1-1.4 s)."""
        files = self.manifest["files"]

        def length(stem: str) -> int:
            return int((files.get(f"{stem}.npy") or {}).get("shape", [0])[0])

        n = len(self)
        ends = {"offsets": length("mz"), "prec_offsets": length("prec_mz"), "formula_offsets": length("formula_ids"),
                "frag_groups": length("frag_mz"), "nl_groups": length("nl_mz")}
        limits = {"prec_order": (0, n), "scan_rows": (0, n), "formula_ids": (0, n), "frag_spec": (0, n),
                  "nl_spec": (0, n), "wblk_loc": (0, self.window_block or 65536)}
        counts = self.manifest.get("counts", {})
        if "n_input" in counts:  # input positions: the hit table's library_input_index and library_file
            limits["input_index"] = (0, int(counts["n_input"]))
        if name.endswith("_code") and name[:-5] in ("formula", "adduct", "instrument"):
            limits[name] = (-1, length(f"{name[:-5]}_keys"))
        if not arr.shape[0] or (name not in ends and name not in limits):
            return None
        lo, hi, ascending = fmt.file_stats(self.path / f"{name}.npy", arr)
        if name in ends:
            if lo != 0 or hi != ends[name] or not ascending:
                return f"is not an offset array from 0 to {ends[name]}"
        elif lo < limits[name][0] or hi >= limits[name][1]:
            return f"holds values outside [{limits[name][0]}, {limits[name][1]})"
        return None

    def keys(self, name: str) -> np.ndarray:
        """String keys of a coded column: ``"formula"``, ``"adduct"`` or ``"instrument"``."""
        key = f"{name}_keys"
        if key not in self._cache:
            self._cache[key] = np.asarray(self.array(key))
        return self._cache[key]

    def code_lookup(self, name: str) -> dict[str, int]:
        key = f"{name}_lut"
        if key not in self._cache:
            self._cache[key] = {str(k): i for i, k in enumerate(self.keys(name).tolist())}
        return self._cache[key]

    @property
    def precursor_mz(self) -> np.ndarray:
        return self.array("precursor_mz")

    @property
    def polarity(self) -> np.ndarray:
        return self.array("polarity")

    def peaks(self, rows: np.ndarray | None = None, threads: int | None = None, intensity_dtype=np.float32, *,
              by_precursor: bool = False):
        """Preprocessed peaks of all spectra or of ``rows`` (in that order), without a Spectra container.

        With ``by_precursor``, ``rows`` are positions in precursor order (``prec_order[rows]`` are the
        library rows, ``0 <= rows < n_with_precursor``) and the peaks come from the precursor-ordered copy,
        where nearby positions are nearby in memory (requires ``has_array("prec_offsets")``).

        Returns
        -------
        offsets : ndarray, int64 (r+1,)
        mz : ndarray, float64 (P,)
        intensity : ndarray, float32 (P,) (``intensity_dtype`` when ``rows`` are given)
        precursor_mz : ndarray, float64 (r,)
        """
        check_threads(threads)
        if by_precursor:
            off, mz, it = self.array("prec_offsets"), self.array("prec_mz"), self.array("prec_intensity")
            pmz = self.array("prec_sorted")[: off.shape[0] - 1]
        else:
            off, mz, it = self.array("offsets"), self.array("mz"), self.array("intensity")
            pmz = self.array("precursor_mz")
        if rows is None:
            return np.asarray(off), np.asarray(mz), np.asarray(it), np.asarray(pmz)
        from fastspec.kernels.peaks import gather_csr

        rows = _as_rows(rows, off.shape[0] - 1)
        return (*gather_csr(off, mz, it, rows, threads=threads, intensity_dtype=intensity_dtype),
                np.asarray(pmz[rows]))

    def spectra(self, rows: np.ndarray | None = None, metadata: bool | Sequence[str] = False) -> Spectra:
        """Library spectra (preprocessed peaks) as Spectra.

        Parameters
        ----------
        rows : ndarray of int64, optional
            A subset (in that order); all spectra when omitted.
        metadata : bool or list of str
            Attach the full metadata table, the named columns, or (False) only ``ion_mode`` (the polarity).
        """
        if rows is not None:
            rows = _as_rows(rows, len(self))
        offsets, mzv, itv, pm = self.peaks(rows)
        ch = self.array("charge")
        cg = np.asarray(ch) if rows is None else np.asarray(ch[rows])
        if metadata is False:
            md = pa.table({"ion_mode": _polarity_strings(np.asarray(self.polarity if rows is None else self.polarity[rows]))})
        else:
            cols = None if metadata is True else _column_list(metadata)
            md = self.metadata(rows=rows, columns=cols)
        return Spectra(offsets, mzv, itv, pm, cg, md, validate=False)

    def metadata(self, rows: np.ndarray | None = None, columns: Sequence[str] | None = None) -> pa.Table:
        """Metadata of the library (all rows or ``rows`` in that order; all columns or ``columns``).

        Only the Parquet row groups that contain ``rows`` are read, and they are kept decoded (up to
        :data:`fastspec._rowgroups.CACHE_BYTES`), so the hit tables of one query after another cost
        about a millisecond, not a group decode per hit. Missing columns become nulls.
        """
        pf = self._parquet()
        names = pf.schema_arrow.names
        columns = None if columns is None else _column_list(columns)
        want = names if columns is None else [c for c in columns if c in names]
        if rows is None:
            n = len(self)
            # a ParquetFile read by two threads at once fails (pyarrow's read cache) or crashes: one at a time
            with self._metadata_lock, self._parquet_errors("metadata.parquet"):
                table = pf.read(columns=want) if want else pa.table({})
        else:
            rows = _as_rows(rows, len(self), "metadata rows")
            n = rows.shape[0]
            if n == 0 or not want:
                table = pf.schema_arrow.empty_table().select(want) if want and n == 0 else pa.table({})
            else:
                reader = self._row_reader()
                with self._parquet_errors("metadata.parquet"):
                    names = set(reader.schema.names)
                    table = reader.take(rows, [c for c in want if c in names])
        if columns is not None:
            table = pa.table({c: table.column(c) if has_column(table, c) else pa.nulls(n) for c in columns})
        return table

    def _row_reader(self):
        """Random row access to the metadata, decoded row groups cached (:mod:`fastspec._rowgroups`)."""
        if "row_reader" not in self._cache:
            from fastspec._rowgroups import RowGroupReader

            generation = self._generation
            self._parquet()  # the same clear error when the file is unreadable
            self._check_unchanged()
            if not self._keep("_cache", "row_reader", RowGroupReader(self.path / "metadata.parquet"), generation):
                return self._row_reader()
        return self._cache["row_reader"]

    def _parquet(self):
        if "parquet" not in self._cache:
            import pyarrow.parquet as pq

            self._adopt_if_pending()
            generation = self._generation
            self._check_unchanged()
            with self._parquet_errors("metadata.parquet"):
                pf = pq.ParquetFile(self.path / "metadata.parquet", page_checksum_verification=True)
            self._check_unchanged()  # (a swap during the read: the other index's file, no corruption)
            if pf.metadata.num_rows != len(self):  # rows are looked up by library row: one per spectrum
                if self._generation != generation:  # this object took on its append meanwhile
                    return self._parquet()
                raise self._corrupted(f"metadata.parquet holds {pf.metadata.num_rows:,} rows for {len(self):,} spectra")
            if not self._keep("_cache", "parquet", pf, generation):
                return self._parquet()
        return self._cache["parquet"]

    @contextlib.contextmanager
    def _parquet_errors(self, name: str):
        """An unreadable or damaged (page checksum) Parquet file of the index as one clear IndexFormatError."""
        try:
            yield
        except (OSError, pa.ArrowInvalid, KeyError) as e:  # (KeyError: a damaged schema lost a column)
            self._check_unchanged()  # swapped by an append meanwhile: that is the error, not damage
            limit = fmt.resource_error(e, self.path / name)
            if limit is not None:
                raise limit from None
            raise IndexFormatError(f"library index {self.path}: {name} is unreadable or corrupted ({e}); "
                                   "`fastspec info --verify` checks every file; rebuild the index") from None

    def csr_weights(self, kind: str, mz_power: float = 0.0, intensity_power: float = 1.0) -> np.ndarray:
        """Per-peak bound weights in CSR order (stored for the defaults, else computed once and cached)."""
        from fastspec.kernels import fragment as fk

        stem = STORED_WEIGHTS.get((kind, float(mz_power), float(intensity_power)))
        if stem is not None and f"{stem}.npy" in self.manifest["files"]:
            return self.array(stem)
        key = f"w:{kind}:{_powers_key(mz_power, intensity_power)}"
        got = self._cache.get(key)
        if got is None:
            got = self._remember_weights(key, fk.peak_weights(self.array("offsets"), self.array("mz"),
                                                              self.array("intensity"), kind, mz_power, intensity_power),
                                         mz_power, intensity_power)
        return got

    def _remember_weights(self, key: str, value, mz_power: float, intensity_power: float):
        """Cache arrays derived for weight powers (:meth:`csr_weights`, :meth:`peak_index`): for the
        default powers while the library is open, for others those of the last :data:`KEEP_POWERS`."""
        if (float(mz_power), float(intensity_power)) == (0.0, 1.0):
            self._cache[key] = value
            return value
        return self._remember(key, value, "weight powers", (float(mz_power), float(intensity_power)), KEEP_POWERS)

    def peak_index(self, kind: str, mz_power: float = 0.0, intensity_power: float = 1.0, losses: bool = False,
                   threads: int | None = None):
        """The arrays of the fragment / neutral-loss bound search for one weight kind (``PeakIndex``).

        ``losses``: the neutral-loss entries carry this kind's scan weights (modified cosine, hybrid
        search); without, entropy kinds get the cosine ones, which only a search of fragments never reads.
        Kind ``nl_cosine``: neutral-loss cosine's loss weights (:meth:`_nl_cosine_index`, computed on
        ``threads`` the first time).
        """
        from fastspec.kernels import fragment as fk

        losses = bool(losses) and kind != "cosine"  # cosine's loss weights are its own either way
        key = f"pi:{kind}:{_powers_key(mz_power, intensity_power)}:{losses}"
        got = self._cache.get(key)
        if got is not None:
            return got
        if kind == "nl_cosine":
            return self._remember_weights(key, self._nl_cosine_index(mz_power, intensity_power, threads), mz_power,
                                          intensity_power)
        w = self.csr_weights(kind, mz_power, intensity_power)
        # scan weights: cosine weights, or square roots of entropy weights (see kernels.fragment._scan)
        scan = (lambda a: a) if kind == "cosine" else np.sqrt
        stem = STORED_WEIGHTS.get((kind, float(mz_power), float(intensity_power)))
        stored = None if stem is None else f"frag_{stem}" + ("" if kind == "cosine" else "_sqrt")
        if kind == "cosine" or not losses:
            nl_stored = "nl_wcos" if kind != "cosine" or (float(mz_power), float(intensity_power)) == (0.0, 1.0) else None
        else:
            nl_stored = None if stem is None else f"nl_{stem}_sqrt"
        if stored is not None and self.has_array(stored):
            fw = self.array(stored)
        else:
            stored = None
            fw = scan(np.asarray(w)[_frag_order(self)])
        if nl_stored is not None and self.has_array(nl_stored):
            nw = self.array(nl_stored)
        else:  # older indexes (before nl_went_sqrt) and other powers: sorted here once per open library
            nl_stored = None
            nw = scan(np.asarray(w)[_nl_order(self)])
        # their band codes (the scans' pre-filter): stored since build 2026-12-04, else computed here
        fq, nq = (self.array(f"{name}_q8") if name is not None and f"{name}_q8.npy" in self.manifest["files"]
                  else fk.quantize_weights(a) for name, a in ((stored, fw), (nl_stored, nw)))
        # memory maps are read-only; computed arrays are made so too, so the kernel compiles once
        w, fw, nw, fq, nq = (_readonly(a) for a in (w, fw, nw, fq, nq))
        gap_min = self.manifest["counts"].get("min_peak_gap")
        if gap_min is None:
            gap_min = float(np.min(self.array("min_gap"))) if len(self) else np.inf
        pi = fk.PeakIndex(self.array("frag_mz"), self.array("frag_spec"), fw, self.array("nl_mz"), self.array("nl_spec"),
                          nw, mz=self.array("mz"), w=w, min_gap_min=float(gap_min),
                          frag_groups=np.asarray(self.array("frag_groups")),
                          nl_groups=np.asarray(self.array("nl_groups")), frag_q8=fq, nl_q8=nq,
                          **self._scan_arrays())
        return self._remember_weights(key, pi, mz_power, intensity_power)

    def _nl_cosine_index(self, mz_power: float, intensity_power: float, threads: int | None = None):
        """``peak_index`` of neutral-loss cosine (kind ``nl_cosine``): the cosine index with its loss
        entries' weights renormalised over each spectrum's peaks below its precursor m/z (computed once
        per open library from the stored cosine ones, no sort); only its loss side is scanned."""
        from fastspec.kernels import fragment as fk

        base = self.peak_index("cosine", mz_power, intensity_power)
        w, scale = fk.below_precursor_weights(base.starts, base.ends, base.mz, base.w, base.precursor_mz, threads,
                                              intensity=self.array("intensity"))
        nw = fk.scaled_entries(base.nl_mz, base.nl_spec, base.nl_w, scale, threads)
        return base._replace(w=_readonly(w), nl_w=_readonly(nw), nl_q8=_readonly(fk.quantize_weights(nw)))

    def scan_rows(self) -> np.ndarray | None:
        """Library row of each scan id of the fragment and neutral-loss indexes (int64 (n,)), or None
        when the scan ids are the rows (indexes of format 2)."""
        return self.array("scan_rows") if self.manifest["build"].get("scan_order") else None

    def _scan_arrays(self) -> dict[str, np.ndarray]:
        """The per-spectrum arrays of :class:`fastspec.kernels.fragment.PeakIndex`, by scan id: gathered
        once per open library (memory maps when the scan ids are rows)."""
        got = self._cache.get("scan arrays")
        if got is not None:
            return got
        off, rows = self.array("offsets"), self.scan_rows()
        if rows is None:
            got = dict(starts=off[:-1], ends=off[1:], precursor_mz=self.array("precursor_mz"),
                       min_gap=self.array("min_gap"), prec_sorted=self.array("prec_sorted"),
                       prec_order=self.array("prec_order"))
        else:
            rows, off = np.asarray(rows), np.asarray(off)
            scan_id = np.full(rows.shape[0], -1, dtype=np.int64)
            scan_id[rows] = np.arange(rows.shape[0], dtype=np.int64)
            if rows.shape[0] and scan_id.min() < 0:  # (rows are range-checked: a repeat leaves a row out)
                raise self._corrupted("scan_rows.npy is not a permutation of the library rows")
            got = dict(starts=off[rows], ends=off[rows + 1], precursor_mz=np.asarray(self.precursor_mz)[rows],
                       min_gap=np.asarray(self.array("min_gap"))[rows], prec_sorted=self.array("prec_sorted"),
                       prec_order=scan_id[np.asarray(self.array("prec_order"))], scan_rows=rows)
        self._cache["scan arrays"] = got
        return got

    def search_arrays(self) -> dict[str, bool]:
        """Which optional search structures the index holds. Indexes built by older versions lack some;
        search then takes a slower path to the same hits (rebuild to get them)."""
        return {
            "precursor_copy": self.has_array("prec_norm"),  # identity windows read in place
            "window_blocks": self.window_block > 0 and self.has_array(WINDOW_WEIGHTS["cosine"]),  # identity bounds
            "window_blocks_entropy": self.window_block > 0 and self.has_array(WINDOW_WEIGHTS["entropy"]),
            "entropy_in_place": self.has_array("prec_entropy_w"),  # identity entropy scored in place
            "entropy_in_place_all": self.has_array("entropy_w"),  # open / hybrid / formula entropy in place
            "band_codes": self.has_array("frag_wcos_q8"),  # open/analog bound scans (else computed on first use)
            "loss_entropy_weights": self.has_array("nl_went_sqrt"),  # hybrid (else sorted on first use)
            # the FAISS threshold index (else the main index gives open / analog / hybrid thresholds): builds
            # since then record "theta" (None where they made none: flat index, too few spectra, theta_index=None)
            "faiss_thresholds": self._faiss_theta_current(),
        }

    def _faiss_theta_current(self) -> bool:
        f = self.manifest["build"].get("faiss")
        return not f or "theta" in f or f.get("index") == "Flat" or len(self) < fmt.THETA_MIN

    def info(self) -> dict[str, Any]:
        """Summary for ``fastspec info``."""
        m = self.manifest
        size = sum(int(e["size"]) for e in m["files"].values())
        inputs = self.input_files
        return {
            "path": str(self.path),
            "format_version": m["format_version"],
            "fastspec_version": m.get("fastspec_version"),
            "created": m.get("created"),
            "n_spectra": m["counts"]["n_spectra"],
            "n_read": m["counts"]["n_read"],
            "n_rejected": m["counts"]["n_rejected"],
            "rejected": m["counts"].get("rejected", {}),
            "read_warnings": m["counts"].get("read_warnings", {}),
            "n_peaks": m["counts"].get("n_peaks"),
            "n_formulas": m["counts"].get("n_formulas"),
            "n_formula_from_smiles": m["counts"].get("n_formula_from_smiles", 0),
            "n_formula_from_inchi": m["counts"].get("n_formula_from_inchi", 0),
            "n_positive": m["counts"].get("n_positive"),
            "n_negative": m["counts"].get("n_negative"),
            "n_unknown_polarity": (m["counts"]["n_spectra"] - m["counts"]["n_positive"] - m["counts"]["n_negative"]
                                   if m["counts"].get("n_positive") is not None else None),
            "preprocess": m["build"]["preprocess"],
            "faiss": m["build"].get("faiss"),
            "size_bytes": size,
            "files": len(m["files"]),
            "search_arrays": self.search_arrays(),
            "n_input_files": len(inputs),
            # a directory of 100k record files would print them all: the first and last few
            "input_files": inputs if len(inputs) <= 20 else inputs[:10] + inputs[-10:],
        }

    def search(self, queries: Any, k: int = 10, *, mode: str = "identity", metric: str | None = None, **kwargs):
        """Search query spectra against the library; :func:`fastspec.search.search` documents every option.

        Keyword options and defaults: ``tolerance=0.02`` (fragments; a float is Da, or ``"0.02da"``,
        ``"10ppm"``), ``precursor_tolerance=0.01`` (identity mode), ``engine="exact"`` (or ``"faiss"``
        with ``nprobe``, ``n_candidates``), ``threads=None``, ``formula=None`` and ``no_neighbour="skip"``
        (formula mode), ``same_adduct`` / ``same_charge`` / ``same_instrument=False``, ``min_matches=0``,
        ``min_score=0.0``, ``on_error="skip"`` (query files), ``progress=None``, ``mz_power=0.0``,
        ``intensity_power=1.0`` and other metric parameters (``preset="khoo2026"`` for ``binned_cosine``).

        Returns
        -------
        Hits
            ``scores`` float32 (n, k), ``indices`` int64 (n, k) (-1: no hit), ``matches`` (n, k),
            ``status``; ``to_arrow()``, ``to_pandas()``, ``to_parquet(path)``, ``write(path)``.
        """
        from fastspec.search import search

        return search(self, queries, k=k, mode=mode, metric=metric, **kwargs)

    def search_to_file(self, queries: Any, path: "str | os.PathLike", k: int = 10, **kwargs) -> dict:
        """Search and write the hit table a chunk of queries at a time (bounded memory); see
        :func:`fastspec.stream.search_to_file`.

        Returns
        -------
        dict
            ``n_queries``, ``n_with_hits``, ``n_skipped``, ``skipped_by_status`` (e.g. ``{"no_peaks": 7}``)
            and the table's ``params`` (see :func:`fastspec.stream.search_to_file`).
        """
        from fastspec.stream import search_to_file

        return search_to_file(self, queries, path, k, **kwargs)

    def __reduce_ex__(self, protocol):
        # multiprocessing pickles what crosses to a worker: say what to do instead of "cannot pickle
        # '_thread.lock' object" (Hits hold their Library, so returning Hits from a worker ends here too)
        raise TypeError(f"a fastspec Library does not cross to another process (it holds locks and open files): "
                        f"pass its path ({str(self.path)!r}) and Library.open it there; send hits back as "
                        "a file (hits.to_parquet) or their arrays")

    def __repr__(self) -> str:
        return f"Library({str(self.path)!r}, n_spectra={len(self)}, format_version={self.format_version})"


def _check_flags(**flags) -> None:
    """ParameterError for a flag that is not a bool: ``overwrite="no"`` would read as True (and replace an
    index)."""
    for name, v in flags.items():
        if not isinstance(v, (bool, np.bool_)):
            raise ParameterError(f"{name} must be True or False, got {v!r}")


def _as_rows(rows, n: int, what: str = "rows") -> np.ndarray:
    """``rows`` as int64 library rows (1-D), each in ``[0, n)``: integers, or numbers that are whole (a
    pandas column of row numbers turned float by its missing values), else ParameterError (``0.7`` was
    truncated to row 0, and ``True`` read as row 1)."""
    try:
        a = np.asarray(rows)
    except OverflowError:  # ints beyond any numpy type
        raise ParameterError(f"{what} must be in [0, {n})") from None
    except ValueError:  # a ragged list
        raise ParameterError(f"{what} must be a one-dimensional sequence of integers") from None
    if a.ndim > 1:
        raise ParameterError(f"{what} must be one-dimensional, got shape {a.shape}")
    a = a.reshape(-1)
    if a.size and a.dtype.kind == "O":  # Python or pyarrow numbers, pandas' nullable Int64 as numpy
        vals = [v.as_py() if hasattr(v, "as_py") else v for v in a.tolist()]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in vals):
            if min(vals) < 0 or max(vals) >= n:  # checked as Python ints: they may be beyond int64
                raise ParameterError(f"{what} must be in [0, {n}), got {min(vals) if min(vals) < 0 else max(vals)}")
            a = np.asarray(vals, dtype=np.int64)
        elif all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                 for v in vals):
            a = np.asarray(vals, dtype=np.float64)  # whole numbers among them: checked below
    if a.size and a.dtype.kind == "f":  # whole numbers only, checked before the cast (1e20 wrapped around)
        if not (np.all(np.isfinite(a)) and np.all(a == np.floor(a))):
            raise ParameterError(f"{what} must be integers, got {a.dtype} values")
        if a.min() < 0 or a.max() >= n:
            raise ParameterError(f"{what} must be in [0, {n}), got {a.min() if a.min() < 0 else a.max():g}")
        a = a.astype(np.int64)
    if a.size and a.dtype.kind not in "iu":
        raise ParameterError(f"{what} must be integers, got {a.dtype} values")
    if a.size and (a.min() < 0 or a.max() >= n):  # (before the cast: the largest uint64 read as -1)
        raise ParameterError(f"{what} must be in [0, {n}), got {a.min() if a.min() < 0 else a.max()}")
    return a.astype(np.int64, copy=False)


def _column_list(columns) -> list[str]:
    """Column names as a list: one name given as a string is one column, not its characters."""
    return [columns] if isinstance(columns, str) else list(columns)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.flags.writeable:
        a = a.view()
        a.setflags(write=False)
    return a


def _polarity_strings(pol: np.ndarray) -> pa.Array:
    # a take in Arrow, not a numpy object array: this runs for every candidate set an exact search scores
    codes = np.where(pol > 0, 1, np.where(pol < 0, 2, 0)).astype(np.int8)
    return pa.array([None, "positive", "negative"], pa.string()).take(pa.array(codes))


def _powers_key(mz_power, intensity_power) -> str:
    """Weight powers as a cache key: one spelling per value (2, 2.0, np.float64(2); -0.0 as 0.0)."""
    return f"{float(mz_power) + 0.0!r}:{float(intensity_power) + 0.0!r}"


def _frag_order(lib: Library) -> np.ndarray:
    if "frag_order" not in lib._cache:
        from fastspec.kernels.fragment import sorted_peak_index

        lib._cache["frag_order"] = sorted_peak_index(lib.array("offsets"), lib.array("mz"), None,
                                                     polarity_groups(lib.polarity), N_POLARITY_GROUPS)[0]
    return lib._cache["frag_order"]


def _nl_order(lib: Library) -> np.ndarray:
    if "nl_order" not in lib._cache:
        from fastspec.kernels.fragment import sorted_peak_index

        pmz = np.asarray(lib.array("precursor_mz"))
        lib._cache["nl_order"] = sorted_peak_index(lib.array("offsets"), lib.array("mz"), np.isfinite(pmz),
                                                   polarity_groups(lib.polarity), N_POLARITY_GROUPS,
                                                   precursor_mz=pmz)[0]
    return lib._cache["nl_order"]


# ====================================================================================== building
class _Progress:
    """A tiny step-progress bar on stderr (tqdm), silent when disabled."""

    def __init__(self, enabled: bool | None, total: int, desc: str):
        import sys

        from fastspec.io._common import wants_progress

        self.bar = None
        if wants_progress(enabled):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False)

    def step(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: weight powers other than the defaults whose derived arrays (:meth:`Library.csr_weights`,
#: :meth:`Library.peak_index`) an open library keeps: the last this many
KEEP_POWERS = 2
#: query preparations (metric, parameters, tolerance) whose stored-peak views a library keeps
#: (``fastspec.search._Context.stored_view``): the last this many
KEEP_VIEWS = 8

#: ``ms_level`` values meaning a single stage of MS (MassBank writes ``MS_TYPE MS`` for EI and MALDI spectra)
_MS1_WORDS = ("1", "ms1", "ms")
#: ``ms_level`` values meaning three or more stages (``3``, ``MS3``, ``ms4`` ...: mzmine / MSnLib MSn exports),
#: after trimming and lower-casing
_MSN_RE = re.compile(r"^(ms)?0*([3-9]|[1-9][0-9]+)$")
_WHOLE_FLOAT = re.compile(r"\.0+$")
#: Up to this many rows, :func:`_ms_stages` judges every value in Python
_FEW_STAGES = 16


def _stage(text: str) -> int:
    """1 for an MS1 ``ms_level`` (trimmed, lower-cased), 3 for MS3 or more, 2 otherwise (MS2, or unknown)."""
    level = _WHOLE_FLOAT.sub("", text)  # "3.0": a float column written as text
    return 1 if level in _MS1_WORDS else 3 if _MSN_RE.match(level) else 2


def _ms_stages(meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Records whose ``ms_level`` says MS1 (``1`` / ``MS1``, or MassBank's ``MS_TYPE MS`` -> ``MS``) and
    records whose ``ms_level`` says MS3 or more (``3``, ``MS3``, ...), any case and surrounding blanks:
    bool (n,) each, never both. A tandem-MS library indexes neither (an MSn spectrum's precursor is a
    fragment, not the molecule), as the mzML and mzXML readers keep MS2 scans only."""
    n = meta.num_rows
    none = np.zeros(n, dtype=bool)
    if not has_column(meta, "ms_level"):
        return none, none.copy()
    col = meta.column("ms_level")
    t = col.type
    plain = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) or \
        pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)
    # a query or a few: Python beats the Arrow kernels' dispatch (~80 us a search call); values whose Python
    # text differs from Arrow's cast (bytes: "b'3'") go the Arrow way
    if n <= _FEW_STAGES and plain:
        stage = [None if v is None else _stage(str(v).strip().lower()) for v in col.to_pylist()]
        return np.array([s == 1 for s in stage], dtype=bool), np.array([s == 3 for s in stage], dtype=bool)
    import pyarrow.compute as pc

    try:  # vectorised: a 2.4M-row column in milliseconds, not a Python loop
        text = pc.utf8_lower(pc.utf8_trim_whitespace(col.cast(pa.string())))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):  # e.g. floats, nested values
        text = pa.array([None if v is None else str(v).strip().lower() for v in col.to_pylist()], pa.string())
    # a column holds a handful of distinct values: each is judged once
    distinct = [v for v in pc.unique(text).to_pylist() if v is not None]
    out = []
    for want in (1, 3):
        stage = [v for v in distinct if _stage(v) == want]
        out.append(pc.fill_null(pc.is_in(text, value_set=pa.array(stage, pa.string())), False)
                   .to_numpy(zero_copy_only=False) if stage else none.copy())
    return out[0], out[1]


#: Spectra the build leaves out (MS1, MSn, no peaks after preprocessing) named in the manifest, per reason
#: (:attr:`Library.left_out`): the first this many
LEFT_OUT_EXAMPLES = 100


def _left_out_examples(before: list, processed: Spectra, inp: np.ndarray, keep: np.ndarray, ms1: np.ndarray,
                       msn: np.ndarray) -> list:
    """``before`` (an appended index's) and the first :data:`LEFT_OUT_EXAMPLES` spectra per reason of
    ``processed`` that ``keep`` leaves out: ``{"input": input position, "id": id or None, "reason": ...}``."""
    out = [dict(d) for d in before]
    per = {}
    for d in out:
        per[d["reason"]] = per.get(d["reason"], 0) + 1
    dropped = np.flatnonzero(~keep)
    if not dropped.shape[0]:
        return out
    ids = (processed.metadata.column("id").take(pa.array(dropped)).to_pylist()
           if "id" in processed.metadata.column_names else [None] * dropped.shape[0])
    for i, sid in zip(dropped.tolist(), ids):
        why = REASON_MS1 if ms1[i] else REASON_MSN if msn[i] else REASON_NO_PEAKS
        if per.get(why, 0) < LEFT_OUT_EXAMPLES:
            per[why] = per.get(why, 0) + 1
            out.append({"input": int(inp[i]), "id": None if sid is None else str(sid), "reason": why})
    return out


def _build_index(
    path: Path,
    processed: Spectra,
    counts: dict,
    preprocess_cfg: dict | None,
    *,
    faiss: bool,
    faiss_params: dict | None,
    threads: int | None,
    overwrite: bool,
    prog: _Progress,
    already_valid: int = 0,
    appended: bool = False,
    created: str | None = None,
    input_index: np.ndarray | None = None,
    n_input: int | None = None,
    allow_empty: bool = True,
    inputs: list | None = None,
    appended_to: dict | None = None,
) -> None:
    """Write every structure of the index for already-preprocessed spectra (atomically).

    ``input_index`` (int64, one per spectrum of ``processed``) is each spectrum's input position
    (default: its row); ``n_input`` the number of input positions used so far (default: len(processed));
    ``inputs`` the inputs covering them (:attr:`Library.input_files`). ``allow_empty=False``: refuse when
    no spectrum beyond the first ``already_valid`` is left; ``appended_to``: the counts of the index
    appended to (the refusal then names this input's own).
    """
    from fastspec.kernels import fragment as fk

    if path.exists() and not overwrite:
        raise IndexFormatError(f"{path} already exists (use overwrite=True / --overwrite)")
    # a tandem-MS library: MS1 records (SIRIUS / MZmine MGF exports interleave them) and MSn ones are
    # counted, not indexed
    ms1, msn = _ms_stages(processed.metadata)
    # the first ``already_valid`` spectra are an index's own (append): indexed as they are, whatever rule
    # held when it was built (MSn records were indexed before 2026-12-05)
    ms1[:already_valid] = False
    msn[:already_valid] = False
    keep = (np.diff(processed.offsets) > 0) & ~ms1 & ~msn
    n_drop = int((~keep).sum())
    first_rejected = counts.get("first_rejected")
    counts = {"n_read": int(counts["n_read"]), "n_rejected": int(counts["n_rejected"]), "rejected": dict(counts["rejected"]),
              "read_warnings": dict(counts.get("read_warnings") or counts.get("warnings") or {})}
    n_ms1, n_msn = int(ms1.sum()), int(msn.sum())  # disjoint (_ms_stages)
    for reason, n_r in ((REASON_MS1, n_ms1), (REASON_MSN, n_msn), (REASON_NO_PEAKS, n_drop - n_ms1 - n_msn)):
        if n_r:
            counts["rejected"][reason] = counts["rejected"].get(reason, 0) + n_r
            counts["n_rejected"] += n_r
    lib = processed if n_drop == 0 else processed.take(np.flatnonzero(keep))
    inp = np.arange(len(processed), dtype=np.int64) if input_index is None else np.asarray(input_index, np.int64)
    counts["left_out"] = _left_out_examples((appended_to or {}).get("left_out") or [], processed, inp, keep, ms1, msn)
    inp = inp if n_drop == 0 else inp[keep]
    n = len(lib)
    counts["n_spectra"] = n
    counts["n_input"] = int(len(processed) if n_input is None else n_input)
    if counts["n_read"] < n + counts["n_rejected"]:
        counts["n_read"] = n + counts["n_rejected"]
    if n == already_valid and not allow_empty:
        # this input's own counts (an append's totals include the index's earlier ones)
        before = appended_to or {"n_read": 0, "rejected": {}}
        n_read = counts["n_read"] - int(before["n_read"])
        was = before.get("rejected") or {}
        why = ", ".join(f"{r}: {c - int(was.get(r, 0))}" for r, c in counts["rejected"].items() if c > int(was.get(r, 0)))
        if first_rejected:  # where to look: the reader's first rejection (file:line: reason)
            why += f"; the first: {first_rejected}"
        what, left = ("append", "the index is unchanged") if appended_to else ("index", "nothing written")
        raise FastspecError(f"no spectrum to {what}: all {n_read} records were rejected ({why}); {left}" if n_read
                            else f"no spectrum to {what} (the input holds none); {left}")

    # arrays are written (and hashed) on a background thread while the next structures are computed
    with fmt.AtomicDirectory(path, overwrite=overwrite) as tmp, fmt.ArrayWriter(tmp) as out:
        prog.step("peaks")
        offsets, mz, inten = lib.offsets, lib.mz, lib.intensity
        pmz = np.asarray(lib.precursor_mz, dtype=np.float64)
        pol = lib.polarity.astype(np.int8)
        out.save("offsets", offsets)
        out.save("mz", mz)
        out.save("intensity", inten)
        out.save("precursor_mz", pmz)
        out.save("charge", lib.charge.astype(np.int8))
        out.save("polarity", pol)
        out.save("input_index", inp)
        from fastspec.kernels.peaks import gather_csr, l2_norms_csr
        from fastspec.kernels.window import block_index as window_block_index
        from fastspec.kernels.window import block_summary

        out.save("norm", l2_norms_csr(offsets, inten, threads=threads))
        finite = np.isfinite(pmz)
        order = np.argsort(np.where(finite, pmz, np.inf), kind="stable").astype(np.int64)
        out.save("prec_order", order)
        out.save("prec_sorted", pmz[order])
        # a second copy of the peaks (+12 bytes per peak on disk): identity search then reads each query's
        # precursor window as one block instead of gathering rows scattered over the whole library
        p_off, p_mz, p_int = gather_csr(offsets, mz, inten, order[: int(finite.sum())], threads=threads)
        out.save("prec_offsets", p_off)
        out.save("prec_mz", p_mz)
        out.save("prec_intensity", p_int)
        p_norm = l2_norms_csr(p_off, p_int, threads=threads)
        out.save("prec_norm", p_norm)
        # entropy weights of the stored peaks, then of the copy (a spectrum's weights are its own peaks'
        # alone, so the copy's are a gather of them)
        entropy_w = _entropy_weights(offsets, mz, inten, threads)
        if entropy_w is not None:
            out.save("entropy_w", entropy_w)
            prec_w = gather_csr(offsets, mz, entropy_w, order[: int(finite.sum())], threads=threads)[2]
        else:  # the peak preparation would drop may lie in a spectrum without a precursor, outside the copy
            prec_w = _entropy_weights(p_off, p_mz, p_int, threads)
        stored_entropy = prec_w is not None
        if stored_entropy:
            out.save("prec_entropy_w", prec_w)
        del entropy_w, prec_w
        prog.step("window index")
        # scan weights straight from the copy's peaks: gathering the library-order ones would need a
        # per-peak index as large as the peaks themselves
        p_w = np.stack([fk.peak_weights(p_off, p_mz, p_int, "cosine", threads=threads),
                        np.sqrt(fk.peak_weights(p_off, p_mz, p_int, "entropy", threads=threads))])
        b_mz, b_loc, b_w = window_block_index(p_off, p_mz, p_w, WINDOW_BLOCK, threads=threads)
        out.save("wblk_mz", b_mz)
        out.save("wblk_sum", block_summary(b_mz))
        out.save("wblk_loc", b_loc)
        for name, row in zip(WINDOW_WEIGHTS.values(), b_w):
            out.save(name, row)
        del p_off, p_mz, p_int, p_norm, p_w, b_mz, b_loc, b_w

        prog.step("fragment index")
        wcos = fk.peak_weights(offsets, mz, inten, "cosine", threads=threads)
        went = fk.peak_weights(offsets, mz, inten, "entropy", threads=threads)
        out.save("wcos", wcos)
        out.save("went", went)
        min_gap = fk.min_peak_gaps(offsets, mz)
        out.save("min_gap", min_gap)
        (forder, fmz, fspec, fgroups), (norder, nlv, nspec, ngroups) = _sort_peaks(offsets, mz, pmz, finite,
                                                                                    polarity_groups(pol), threads)
        # entries name spectra by scan id (base peak, second peak, precursor m/z; SCAN_ORDER, PeakIndex):
        # the bound search's accumulators of spectra sharing fragments then lie together whatever the
        # input order
        scan_rows = _scan_order(offsets, mz, inten, pmz, threads)
        out.save("scan_rows", scan_rows)
        scan_id = np.empty(offsets.shape[0] - 1, dtype=np.int32)
        scan_id[scan_rows] = np.arange(scan_id.shape[0], dtype=np.int32)
        np.take(scan_id, fspec, out=fspec, mode="clip")  # in place (mode "raise" buffers a copy)
        np.take(scan_id, nspec, out=nspec, mode="clip")
        out.save("frag_mz", fmz)
        out.save("frag_spec", fspec)
        out.save("frag_groups", fgroups)
        out.save("nl_groups", ngroups)
        for kind, scan_w in (("cosine", wcos[forder]), ("entropy", np.sqrt(went[forder]))):
            name = f"frag_{STORED_WEIGHTS[(kind, 0.0, 1.0)]}{'' if kind == 'cosine' else '_sqrt'}"
            out.save(name, scan_w)
            out.save(f"{name}_q8", fk.quantize_weights(scan_w))
            del scan_w
        del fmz, fspec, forder
        out.save("nl_mz", nlv)
        out.save("nl_spec", nspec)
        for name, nl_w in (("nl_wcos", wcos[norder]), ("nl_went_sqrt", np.sqrt(went[norder]))):
            out.save(name, nl_w)
            out.save(f"{name}_q8", fk.quantize_weights(nl_w))
            del nl_w
        del nlv, nspec, norder, wcos, went

        prog.step("metadata")
        md = lib.metadata
        formulas, n_from_smiles, n_from_inchi = formulas_or_from_structure(
            _column_strings(md, "formula"), *(md.column(c) if c in md.column_names else None
                                              for c in ("smiles", "inchi")))
        fcode, fkeys = _encode(formulas)
        acode, akeys = _encode(normalize_adducts(_column_strings(md, "adduct")))
        icode, ikeys = _encode([None if v is None else v.strip() for v in _column_strings(md, "instrument_type")])
        out.save("formula_code", fcode)
        out.save("formula_keys", fkeys)
        out.save("adduct_code", acode)
        out.save("adduct_keys", akeys)
        out.save("instrument_code", icode)
        out.save("instrument_keys", ikeys)
        has = fcode >= 0
        ids = np.flatnonzero(has).astype(np.int32)
        ids = ids[np.argsort(fcode[has], kind="stable")]
        foff = np.zeros(fkeys.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(fcode[has], minlength=fkeys.shape[0]), out=foff[1:])
        out.save("formula_offsets", foff)
        out.save("formula_ids", ids)
        _write_metadata(tmp / "metadata.parquet", md, formulas)
        if inputs is not None:
            _write_inputs(tmp / INPUTS_FILE, inputs)

        prog.step("faiss")
        faiss_info = None
        if faiss and n > 0:
            from fastspec import vectors

            faiss_info = vectors.build_faiss_index(tmp / "faiss.index", lib, params=faiss_params, threads=threads)

        prog.step("manifest")
        manifest = {
            "fastspec_version": __version__,
            "created": created or _now(),
            "modified": _now(),
            "build": {
                "preprocess": preprocess_cfg,
                "faiss": faiss_info,
                # what the caller asked for (not what it resolved to at this size): an append rebuilds from
                # this, so a library grown from a small seed gets the IVF index its new size calls for
                "faiss_requested": dict(faiss_params or {}) if faiss else None,
                "metadata_row_group": _METADATA_ROW_GROUP,
                "window_block": WINDOW_BLOCK,
                # how entropy_w and prec_entropy_w were prepared (recorded only when they were stored)
                "prec_entropy": {"metric": "entropy", "clean": False} if stored_entropy else None,
                "scan_order": SCAN_ORDER,
                "weights": {"wcos": {"kind": "cosine", "mz_power": 0.0, "intensity_power": 1.0},
                            "went": {"kind": "entropy"}},
            },
            "counts": {
                **counts,
                "n_peaks": int(offsets[-1]),
                "n_positive": int((pol > 0).sum()),
                "n_negative": int((pol < 0).sum()),
                "n_formulas": int(fkeys.shape[0]),
                "n_formula_from_smiles": n_from_smiles,
                "n_formula_from_inchi": n_from_inchi,
                "n_with_precursor": int(finite.sum()),
                "max_mz": float(mz.max()) if mz.shape[0] else 0.0,
                "min_peak_gap": float(min_gap.min()) if n else None,
            },
        }
        if appended:
            manifest["appended"] = True
        fmt.write_manifest(tmp, manifest, out.finish())


def _entropy_weights(off, mz, inten, threads) -> np.ndarray | None:
    """The entropy weights of stored peaks (CSR) as entropy search prepares them (``clean=False``: sum 1
    in float32, then ms_entropy's entropy weight; float32 (P,)), or None when that preparation would drop
    a stored peak (an m/z that is 0 in float32: the build already dropped non-positive values).
    Search then scores the stored m/z with these weights in place instead of gathering and preparing
    its candidates: identity search on the precursor-ordered copy (2.4M library: ~12 us of ~75 us per
    entropy query), open, hybrid and formula search in library order (2.4M, 1,000 queries, 1 thread:
    hybrid 3.29 -> 2.80 ms per query on library copies, 3.92 -> 3.71 on novel compounds; open entropy
    1.32 -> 1.20 and 1.85 -> 1.71)."""
    from fastspec.kernels.entropy import prepare_entropy

    # the tolerance only matters to cleaning, which clean=False skips
    e_off, e_mz, e_w = prepare_entropy(off, mz, inten, tol_da=0.02, tol_ppm=-1.0, clean=False,
                                       weighted=True, threads=threads)
    # same offsets: nothing dropped, so its m/z are the stored ones in float32 (the entropy kernels read
    # m/z as float32), checked rather than assumed
    if not np.array_equal(e_off, off) or not np.array_equal(e_mz, np.asarray(mz).astype(np.float32)):
        return None
    return e_w


def _scan_order(offsets, mz, inten, pmz, threads) -> np.ndarray:
    """Library rows in the order the bound search numbers them (see ``SCAN_ORDER``), int64 (n,)."""
    from fastspec.kernels.peaks import top_peaks_mz

    pkey = np.where(np.isfinite(pmz), pmz, np.inf)
    top = top_peaks_mz(offsets, mz, inten, threads=threads)
    # spectra with the same base peak (0.01 Da), then the same second peak (0.1 Da), then by precursor
    # m/z: spectra sharing their main fragments, and one compound's spectra, get neighbouring ids
    return np.lexsort((pkey, np.round(top[:, 1], 1), np.round(top[:, 0], 2))).astype(np.int64)


def _sort_peaks(offsets, mz, pmz, finite, groups, threads):
    """Fragment-ion and neutral-loss sort orders, grouped by polarity (two large sorts, run side by side
    when allowed)."""
    from fastspec.kernels import fragment as fk

    def neutral_losses():
        return fk.sorted_peak_index(offsets, mz, finite, groups, N_POLARITY_GROUPS, precursor_mz=pmz, threads=threads)

    def fragments():
        return fk.sorted_peak_index(offsets, mz, None, groups, N_POLARITY_GROUPS, threads=threads)

    if threads == 1:
        return fragments(), neutral_losses()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as ex:  # numpy sorts release the GIL
        f1 = ex.submit(fragments)
        f2 = ex.submit(neutral_losses)
        return f1.result(), f2.result()


def _write_metadata(path: Path, md: pa.Table, formulas: list) -> None:
    import pyarrow.parquet as pq

    cols = {}
    for name in md.column_names:
        col = md.column(name)
        if pa.types.is_null(col.type):
            col = col.cast(pa.string())
        cols[name] = col
    table = pa.table(cols) if cols else pa.table({"id": pa.nulls(md.num_rows, pa.string())})
    if "formula_canonical" in table.column_names:
        table = table.drop(["formula_canonical"])
    table = table.append_column("formula_canonical", pa.array(formulas, pa.string()))
    # page checksums: a damaged page is refused when read (zstd alone decodes most flipped bytes to other
    # values without a word: 30 of 31 single-byte flips of a test file), not only by a full --verify
    opts = dict(compression="zstd", row_group_size=_METADATA_ROW_GROUP, write_page_checksum=True)
    try:
        pq.write_table(table, path, **opts)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        from fastspec.spectra import _stringify

        pq.write_table(_stringify(table), path, **opts)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
