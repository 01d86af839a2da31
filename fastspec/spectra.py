"""Columnar container for many MS/MS spectra (CSR peaks + Arrow metadata)."""
from __future__ import annotations

import functools
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from fastspec.errors import FastspecError

#: Canonical metadata keys. Readers map the usual aliases onto these (see ``fastspec.io.meta``).
CANONICAL_KEYS = (
    "id",
    "name",
    "precursor_mz",
    "charge",
    "ion_mode",
    "adduct",
    "formula",
    "smiles",
    "inchikey",
    "inchikey14",
    "instrument_type",
    "instrument",
    "collision_energy",
    "fragmentation_mode",
)


def _segment_ids(offsets: np.ndarray) -> np.ndarray:
    """Spectrum index of every peak, int64 (n_peaks,)."""
    lengths = np.diff(offsets)
    return np.repeat(np.arange(lengths.shape[0], dtype=np.int64), lengths)


def _gather_index(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peak positions of ``rows`` in order, and the new offsets. Vectorised (no Python loop)."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    new_offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    total = int(new_offsets[-1])
    # position = start of own row + rank inside the row
    peak_idx = np.arange(total, dtype=np.int64) - np.repeat(new_offsets[:-1] - starts, lengths)
    return peak_idx, new_offsets


def sort_peaks_csr(offsets: np.ndarray, mz: np.ndarray, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Sort peaks by m/z inside each spectrum (stable). Only touches unsorted spectra.

    Returns
    -------
    mz, intensity : ndarray
        Sorted copies (or the inputs themselves when already sorted).
    n_fixed : int
        Number of spectra that were not sorted.
    """
    if mz.shape[0] < 2:
        return mz, intensity, 0
    d = np.diff(mz)
    bad = ~(d >= 0)  # NaN would hide disorder from "d < 0"
    if not bad.any():
        return mz, intensity, 0
    seg = _segment_ids(offsets)
    # a negative step across a spectrum boundary is fine
    bad &= seg[1:] == seg[:-1]
    if not bad.any():
        return mz, intensity, 0
    bad_rows = np.unique(seg[1:][bad])
    order = np.arange(mz.shape[0], dtype=np.int64)
    peak_idx, _ = _gather_index(offsets, bad_rows)
    sub_seg = seg[peak_idx]
    sub_order = np.lexsort((mz[peak_idx], sub_seg))  # lexsort is stable
    order[peak_idx] = peak_idx[sub_order]
    return mz[order], intensity[order], int(bad_rows.shape[0])


class SpectrumView:
    """A light, read-only view of one spectrum inside a :class:`Spectra`.

    Attributes are computed on access; ``mz`` and ``intensity`` are numpy views, not copies.
    """

    __slots__ = ("_parent", "index")

    def __init__(self, parent: "Spectra", index: int):
        self._parent = parent
        self.index = index

    @property
    def mz(self) -> np.ndarray:
        o = self._parent.offsets
        return self._parent.mz[o[self.index] : o[self.index + 1]]

    @property
    def intensity(self) -> np.ndarray:
        o = self._parent.offsets
        return self._parent.intensity[o[self.index] : o[self.index + 1]]

    @property
    def peaks(self) -> np.ndarray:
        """(n_peaks, 2) float64 array of m/z and intensity (a copy)."""
        return np.column_stack([self.mz, self.intensity.astype(np.float64)])

    @property
    def precursor_mz(self) -> float:
        return float(self._parent.precursor_mz[self.index])

    @property
    def charge(self) -> int:
        return int(self._parent.charge[self.index])

    @property
    def metadata(self) -> dict[str, Any]:
        return self._parent.metadata.slice(self.index, 1).to_pylist()[0]

    def get(self, key: str, default: Any = None) -> Any:
        md = self._parent.metadata
        if not has_column(md, key):
            return default
        v = md.column(key)[self.index].as_py()
        return default if v is None else v

    def __len__(self) -> int:
        o = self._parent.offsets
        return int(o[self.index + 1] - o[self.index])

    def __repr__(self) -> str:
        return f"SpectrumView(index={self.index}, n_peaks={len(self)}, precursor_mz={self.precursor_mz:g})"


class Spectra:
    """Many spectra in columnar form.

    Attributes
    ----------
    offsets : ndarray, int64, shape (n+1,)
        Peaks of spectrum ``i`` are ``mz[offsets[i]:offsets[i+1]]``.
    mz : ndarray, float64, shape (n_peaks,)
        Fragment m/z (Da/charge), sorted ascending within each spectrum.
    intensity : ndarray, float32, shape (n_peaks,)
        Fragment intensities (arbitrary units).
    precursor_mz : ndarray, float64, shape (n,)
        Precursor m/z, NaN when unknown.
    charge : ndarray, int8, shape (n,)
        Signed precursor charge, 0 when unknown.
    metadata : pyarrow.Table
        One row per spectrum, canonical keys (:data:`CANONICAL_KEYS`) plus any others.

    Notes
    -----
    Instances are treated as immutable: operations return new objects and may share arrays.
    """

    __slots__ = ("offsets", "mz", "intensity", "precursor_mz", "charge", "metadata")

    def __init__(
        self,
        offsets: np.ndarray,
        mz: np.ndarray,
        intensity: np.ndarray,
        precursor_mz: np.ndarray | None = None,
        charge: np.ndarray | None = None,
        metadata: pa.Table | None = None,
        *,
        validate: bool = True,
    ):
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        mz = np.ascontiguousarray(mz, dtype=np.float64)
        if validate:
            _refuse_float32_overflow(intensity)
        intensity = np.ascontiguousarray(intensity, dtype=np.float32)
        n = offsets.shape[0] - 1
        if precursor_mz is None:
            precursor_mz = _column_as_float(metadata, "precursor_mz", n)
        if charge is None:
            charge = _column_as_int8(metadata, "charge", n)
        precursor_mz = np.ascontiguousarray(precursor_mz, dtype=np.float64)
        charge = np.asarray(charge)
        if charge.dtype.kind in "OUS":  # text ("1-", "2+") as the readers read it
            from fastspec.io.meta import parse_charge

            charge = np.array([parse_charge(None if _is_missing(v) else v)[0] for v in charge.ravel()],
                              np.int8).reshape(charge.shape)
        if charge.dtype != np.int8:
            try:
                charge = np.asarray(charge, dtype=np.float64)
            except (TypeError, ValueError):
                raise FastspecError("charge must be numbers") from None
            charge = _int8_charges(charge)
        elif charge.size and charge.min() == -128:  # beyond +-127 as in every other form: unknown
            charge = np.where(charge == -128, 0, charge).astype(np.int8)
        charge = np.ascontiguousarray(charge, dtype=np.int8)
        if metadata is None:
            metadata = _position_ids(n)
        if validate:
            if offsets.ndim != 1 or n < 0 or offsets[0] != 0 or offsets[-1] != mz.shape[0]:
                raise FastspecError("offsets must be 1-D, start at 0 and end at len(mz)")
            if np.any(np.diff(offsets) < 0):
                raise FastspecError("offsets must be non-decreasing")
            if mz.ndim != 1 or intensity.ndim != 1:  # (an (n, 1) column would reach the kernels as 2-D)
                raise FastspecError(f"mz and intensity must be 1-D (all spectra's peaks end to end), got shapes "
                                    f"{mz.shape} and {intensity.shape}")
            if mz.shape != intensity.shape:
                raise FastspecError(f"mz and intensity differ in length: {mz.shape[0]} != {intensity.shape[0]}")
            if precursor_mz.shape != (n,) or charge.shape != (n,):
                raise FastspecError("precursor_mz and charge must have one value per spectrum")
            if metadata.num_rows != n:
                raise FastspecError(f"metadata has {metadata.num_rows} rows for {n} spectra")
            mz, intensity, _ = sort_peaks_csr(offsets, mz, intensity)
        self.offsets = offsets
        self.mz = mz
        self.intensity = intensity
        self.precursor_mz = precursor_mz
        self.charge = charge
        self.metadata = metadata

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        mz_list: Sequence[Sequence[float]],
        intensity_list: Sequence[Sequence[float]],
        precursor_mz: Sequence[float] | np.ndarray | None = None,
        metadata: pa.Table | Mapping[str, Sequence] | Sequence[Mapping[str, Any]] | None = None,
        charge: Sequence[int] | np.ndarray | None = None,
    ) -> "Spectra":
        """Build from per-spectrum peak lists.

        Parameters
        ----------
        mz_list, intensity_list : sequence of array-like
            One array of m/z (Da) and one of intensities per spectrum; peaks are sorted by m/z.
        precursor_mz : array-like of float, optional
            Precursor m/z per spectrum (NaN/None when unknown). Defaults to the metadata column.
        metadata : pyarrow.Table, dict of columns, or list of dicts, optional
            Per-spectrum metadata; keys are used as given (readers harmonise aliases).
        charge : array-like of int, optional
            Signed precursor charge. Defaults to the metadata ``charge`` column, else 0.
        """
        if intensity_list is None or isinstance(intensity_list, (str, bytes)):
            raise FastspecError("intensity_list is required: one array of intensities per spectrum (for ms_entropy's "
                                "(n, 2) peak arrays: mz_list=[p[:, 0] ...], intensity_list=[p[:, 1] ...])")
        if len(mz_list) != len(intensity_list):
            raise FastspecError("mz_list and intensity_list differ in length")
        n = len(mz_list)
        for i, (m, it) in enumerate(zip(mz_list, intensity_list)):
            if np.ndim(m) != 1 or np.ndim(it) != 1:
                raise FastspecError(f"spectrum {i}: expected one 1-D array of m/z and one of intensities per spectrum, "
                                    f"got shapes {np.shape(m)} and {np.shape(it)} (for (mz, intensity) pairs use "
                                    "mz_list=[p[:, 0] ...], intensity_list=[p[:, 1] ...])")
            if len(m) != len(it):
                raise FastspecError(f"spectrum {i}: {len(m)} m/z values but {len(it)} intensities")
        lengths = np.fromiter((len(m) for m in mz_list), dtype=np.int64, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        try:
            mz = np.concatenate([np.asarray(m, dtype=np.float64) for m in mz_list]) if n else np.zeros(0)
            # as given (float64 too): __init__ refuses values beyond float32's range before storing float32
            inten = np.concatenate([np.asarray(i) for i in intensity_list]) if n else np.zeros(0, np.float32)
            if inten.dtype.kind not in "biuf":  # text ("1.5") or objects: numbers, or a clear error
                inten = inten.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise FastspecError(f"m/z and intensities must be numbers ({e})") from None
        table = _to_table(metadata, n)
        if precursor_mz is not None:
            if np.ndim(precursor_mz) == 0:
                raise FastspecError("precursor_mz must hold one value per spectrum (a list or array), got a "
                                    f"single {type(precursor_mz).__name__}")
            precursor_mz = _as_precursors(precursor_mz)
        return cls(offsets, mz, inten, precursor_mz, charge, table)

    @classmethod
    def empty(cls) -> "Spectra":
        return cls(np.zeros(1, np.int64), np.zeros(0), np.zeros(0, np.float32))

    def with_peaks(self, offsets: np.ndarray, mz: np.ndarray, intensity: np.ndarray, *, validate: bool = False) -> "Spectra":
        """Same spectra (metadata, precursors) with new peak arrays; used by preprocessing."""
        return Spectra(offsets, mz, intensity, self.precursor_mz, self.charge, self.metadata, validate=validate)

    def keep_peaks(self, keep: np.ndarray) -> "Spectra":
        """Same spectra with only the peaks where ``keep`` (bool (n_peaks,)) is True (the same object when
        it keeps them all); a spectrum may be left without peaks."""
        keep = np.asarray(keep, dtype=bool)
        if keep.all():
            return self
        n = len(self)
        seg = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.offsets))
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(seg[keep], minlength=n), out=offsets[1:])
        return self.with_peaks(offsets, np.asarray(self.mz)[keep], np.asarray(self.intensity)[keep])

    def with_metadata(self, metadata: pa.Table) -> "Spectra":
        """Same peaks with a replaced metadata table (same number of rows)."""
        return Spectra(self.offsets, self.mz, self.intensity, self.precursor_mz, self.charge, metadata, validate=False)

    # ------------------------------------------------------------------ sequence protocol
    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    @property
    def n_peaks(self) -> np.ndarray:
        """Peaks per spectrum, int64 (n,)."""
        return np.diff(self.offsets)

    def __getitem__(self, key) -> "Spectra | SpectrumView":
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if i < -n or i >= n:
                raise IndexError(f"spectrum index {i} out of range for {n} spectra")
            return SpectrumView(self, i % n)
        if isinstance(key, slice):
            rows = np.arange(n, dtype=np.int64)[key]
        else:
            rows = np.asarray(key)
            if rows.dtype == bool:
                if rows.shape != (n,):
                    raise IndexError("boolean mask must have one entry per spectrum")
                rows = np.flatnonzero(rows)
            elif rows.size and not np.issubdtype(rows.dtype, np.integer):  # 1.9 or "abc" is no position
                raise IndexError(f"spectra are indexed by integers, slices or boolean masks, got {key!r}")
            rows = rows.astype(np.int64, copy=False).ravel()
            if rows.size and (rows.min() < -n or rows.max() >= n):
                raise IndexError(f"spectrum index out of range for {n} spectra")
            rows = np.where(rows < 0, rows + n, rows)
        return self.take(rows)

    def take(self, rows: np.ndarray, metadata: bool = True) -> "Spectra":
        """Spectra at ``rows`` (int64 positions), in that order; without ``metadata`` only peaks,
        precursors and charges (a metadata ``take`` costs more than the peaks of a few spectra)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):  # a negative row read another's peaks
            raise IndexError(f"take: rows must be positions 0 <= row < {len(self)} (spectra[rows] also takes "
                             f"negative ones), got {int(rows.min())}..{int(rows.max())}")
        peak_idx, offsets = _gather_index(self.offsets, rows)
        meta = None
        if metadata:
            n = rows.shape[0]
            # a run of rows (one spectrum, a slice) is a zero-copy Arrow slice: a take of one row over
            # the readers' ~20 columns cost ~0.3 ms, a third of a one-query identity search
            if n and rows[0] >= 0 and rows[-1] - rows[0] == n - 1 and (n == 1 or bool(np.all(np.diff(rows) == 1))):
                meta = self.metadata.slice(int(rows[0]), n)
            else:
                meta = self.metadata.take(pa.array(rows, pa.int64()))
        return Spectra(offsets, self.mz[peak_idx], self.intensity[peak_idx], self.precursor_mz[rows],
                       self.charge[rows], meta, validate=False)

    def __iter__(self) -> Iterator[SpectrumView]:
        for i in range(len(self)):
            yield SpectrumView(self, i)

    def __add__(self, other: "Spectra") -> "Spectra":
        return Spectra.concat([self, other])

    @staticmethod
    def concat(parts: Iterable["Spectra"]) -> "Spectra":
        """Concatenate spectra; metadata schemas are unified (missing columns become null)."""
        parts = [p for p in parts]
        if not parts:
            return Spectra.empty()
        if len(parts) == 1:
            return parts[0]
        lens = [p.offsets[-1] for p in parts]
        shifts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)]).astype(np.int64)
        tables = [p.metadata for p in parts]
        try:
            meta = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            # incompatible types for a column (exact_mass a number in one file, text in another): that
            # column, and only that one, becomes strings
            clash = _clashing_columns(tables)
            meta = pa.concat_tables([_stringify(t, clash) for t in tables], promote_options="permissive")
        return Spectra(
            offsets,
            np.concatenate([p.mz for p in parts]),
            np.concatenate([p.intensity for p in parts]),
            np.concatenate([p.precursor_mz for p in parts]),
            np.concatenate([p.charge for p in parts]),
            meta.combine_chunks(),
            validate=False,
        )

    # ------------------------------------------------------------------ derived columns
    def column(self, key: str, default: Any = None) -> list:
        """Metadata column as a Python list (``default`` repeated when absent)."""
        if has_column(self.metadata, key):
            return self.metadata.column(key).to_pylist()
        return [default] * len(self)

    @property
    def ids(self) -> list[str]:
        """Spectrum identifiers (metadata ``id``; the position when missing)."""
        ids = self.column("id")
        return [str(i) if v is None else str(v) for i, v in enumerate(ids)]

    @property
    def polarity(self) -> np.ndarray:
        """+1 positive, -1 negative, 0 unknown; int8 (n,). From ``ion_mode`` (or, in metadata given in memory
        with keys as written, an alias the readers know: matchms' ``ionmode``, ``polarity``...; a row without
        a value in one such column takes the next's, as in spectra concatenated from both kinds), else the
        charge sign, else the sign of the charge the adduct implies (``[M-H]-``; readers fill the charge from
        it, metadata given in memory may hold only the adduct)."""
        pol = np.sign(self.charge).astype(np.int8)
        names = self.metadata.column_names if self.metadata.num_columns else []
        if not names:
            return pol
        from fastspec.io.meta import adduct_charge, parse_ion_mode

        # the readers' own parser: "n/a", "none", "neutral" are unknown, not negative
        sign = {"positive": 1, "negative": -1}
        decided = np.zeros(len(pol), dtype=bool)
        for col in _columns_of(tuple(names), "ion_mode"):
            valid, s = _label_signs(self.metadata.column(col), lambda v: sign.get(parse_ion_mode(v), 0))
            now = valid & ~decided & (s != 0)
            pol[now] = s[now]
            decided |= valid
        for col in _columns_of(tuple(names), "adduct"):
            if not (pol == 0).any():
                break
            valid, s = _label_signs(self.metadata.column(col), lambda v: int(np.sign(adduct_charge(v)[0])))
            now = valid & (pol == 0)
            pol[now] = s[now]
        return pol

    def __repr__(self) -> str:
        return f"Spectra(n={len(self)}, n_peaks={int(self.offsets[-1])}, columns={self.metadata.column_names})"

    # ------------------------------------------------------------------ matchms interop
    def to_matchms(self) -> list:
        """Convert to a list of ``matchms.Spectrum`` (requires matchms); ``id``, ``name`` and ``ion_mode``
        go under matchms' keys ``spectrum_id``, ``compound_name`` and ``ionmode``. The other keys pass
        through matchms' own key harmonisation, so a round trip back through :meth:`from_matchms` can rename
        some (``date`` -> ``record_date``; ``exact_mass``, ``mw`` come back as they were) or drop them
        (``precursor_type``); peaks, precursor m/z, charge, polarity and ids are kept."""
        try:
            from matchms import Spectrum
        except ImportError as e:  # pragma: no cover - depends on environment
            raise FastspecError("to_matchms() needs matchms: pip install matchms") from e
        rows = self.metadata.to_pylist()
        out = []
        for i, md in enumerate(rows):
            md = {_MATCHMS_KEYS.get(k, k): v for k, v in md.items() if v is not None}
            pmz = self.precursor_mz[i]
            if np.isfinite(pmz):
                md["precursor_mz"] = float(pmz)
            else:
                md.pop("precursor_mz", None)
            if self.charge[i] != 0:
                md["charge"] = int(self.charge[i])
            lo, hi = self.offsets[i], self.offsets[i + 1]
            out.append(
                Spectrum(
                    mz=self.mz[lo:hi].copy(),
                    intensities=self.intensity[lo:hi].astype(np.float64),
                    metadata=md,
                    metadata_harmonization=False,
                )
            )
        return out

    @classmethod
    def from_matchms(cls, spectra: Iterable) -> "Spectra":
        """Build from ``matchms.Spectrum`` objects.

        Their metadata keys are harmonised as the readers' are (matchms' ``ionmode``, ``spectrum_id``,
        ``compound_name`` become ``ion_mode``, ``id``, ``name``; ``inchikey14`` is derived), so the
        polarity filter, hit tables and ids see them; the keys matchms renames on loading get the readers'
        names back (``parent_mass`` -> ``exact_mass``, ``nominal_mass`` -> ``mw``, ``synon`` ->
        ``synonyms``; ``num_peaks``, which the peaks themselves give, is left out); values keep their types.
        """
        from fastspec.io.meta import harmonise_table

        spectra = list(spectra)
        bad = next((s for s in spectra if not (hasattr(s, "peaks") and hasattr(s, "metadata"))), None)
        if bad is not None:
            raise FastspecError(f"from_matchms expects matchms.Spectrum objects, got {type(bad).__name__} (arrays: "
                                "Spectra.from_arrays)")
        mzs = [s.peaks.mz for s in spectra]
        ints = [s.peaks.intensities for s in spectra]
        md = _to_table([_from_matchms_keys(s.metadata) for s in spectra], len(spectra))
        md = harmonise_table(md, text=False) if md is not None and md.num_columns else md
        pmz = [s.get("precursor_mz") for s in spectra]
        if md is not None and "precursor_mz" in md.column_names and any(v is None for v in pmz):
            # matchms' key is unset without its harmonisation; the readers' rules read PEPMASS then
            own = md.column("precursor_mz").to_pylist()
            pmz = [own[i] if v is None else v for i, v in enumerate(pmz)]
        return cls.from_arrays(mzs, ints, precursor_mz=[np.nan if v is None else v for v in pmz], metadata=md)


def is_matchms(obj) -> bool:
    """Whether ``obj`` is a ``matchms.Spectrum`` (by duck type within matchms; matchms is not imported)."""
    return type(obj).__module__.startswith("matchms") and hasattr(obj, "peaks") and hasattr(obj, "metadata")


def matchms_to_spectra(obj):
    """``obj`` as :class:`Spectra` when it is one matchms Spectrum or a non-empty list/tuple of them, else
    ``obj`` unchanged: matchms users' inputs taken where a Spectra is expected."""
    if is_matchms(obj):
        return Spectra.from_matchms([obj])
    if isinstance(obj, (list, tuple)) and obj and all(is_matchms(s) for s in obj):
        return Spectra.from_matchms(obj)
    return obj


# ---------------------------------------------------------------------- helpers
#: fastspec's harmonised keys under the names matchms' own filters use (``from_matchms`` maps them back)
_MATCHMS_KEYS = {"id": "spectrum_id", "name": "compound_name", "ion_mode": "ionmode"}
#: keys matchms' loaders rename (its known_key_conversions: ExactMass, MW) or keep (Synon), under the names
#: fastspec's readers give the same fields
_FROM_MATCHMS = {"parent_mass": "exact_mass", "nominal_mass": "mw", "synon": "synonyms"}


def _from_matchms_keys(metadata) -> dict:
    """A matchms spectrum's metadata with the keys of :data:`_FROM_MATCHMS` renamed (a key the readers'
    name already holds stays) and ``num_peaks`` left out."""
    md = dict(metadata)
    md.pop("num_peaks", None)
    # matchms without metadata harmonisation keeps MGF's PEPMASS as (m/z, intensity) and CHARGE as a list
    pep = md.get("pepmass")
    if isinstance(pep, (tuple, list)):
        md["pepmass"] = pep[0] if len(pep) else None
        if len(pep) > 1 and pep[1] is not None:
            md.setdefault("precursor_intensity", pep[1])
    charge = md.get("charge")
    if isinstance(charge, (tuple, list, np.ndarray)):
        md["charge"] = charge[0] if len(charge) else None
    for theirs, ours in _FROM_MATCHMS.items():
        if theirs in md and ours not in md:
            md[ours] = md.pop(theirs)
    return md

def _column(values) -> pa.Array:
    """One metadata column given in memory: as Arrow infers it, else as text, where a float NaN (pandas'
    missing value in a column of strings) is null, not the text 'nan'."""
    try:
        return pa.array(values if isinstance(values, np.ndarray) else list(values))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None or (isinstance(v, float) and v != v) else str(v) for v in values],
                        pa.string())


def _to_table(metadata, n: int) -> pa.Table | None:
    if metadata is None:
        return None
    if isinstance(metadata, pa.Table):
        table = metadata
    elif hasattr(metadata, "columns") and hasattr(metadata, "to_dict") and hasattr(metadata, "iloc"):
        try:  # a DataFrame (iterating it gives its column names)
            table = pa.Table.from_pandas(metadata, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column of mixed types: as a dict of lists is read
            return _to_table({str(k): [None if _is_missing(v) else v for v in col]
                              for k, col in metadata.to_dict("list").items()}, n)
    elif isinstance(metadata, Mapping):
        table = pa.table({k: v if isinstance(v, pa.Array) else _column(v) for k, v in metadata.items()})
    else:
        rows = list(metadata)
        keys: dict[str, None] = {}
        for r in rows:
            keys.update(dict.fromkeys(r))
        cols = {k: _column([r.get(k) for r in rows]) for k in keys}
        table = pa.table(cols) if cols else pa.table({"id": pa.array([str(i) for i in range(n)])})
    if table.num_rows != n:
        raise FastspecError(f"metadata has {table.num_rows} rows for {n} spectra")
    return table


def has_column(table: pa.Table, key: str) -> bool:
    """``key in table.column_names``, without building that list of every name (pyarrow makes one per
    access: ~7 us for 18 columns, against ~0.2 us here; searches test columns on every call)."""
    return isinstance(key, str) and bool(table.schema.get_all_field_indices(key))


def _column_as_float(table: pa.Table | None, key: str, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    if table is None or not has_column(table, key):
        return out
    col = table.column(key)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        # unsafe: integers beyond 2**53 (a garbage column) round instead of raising ArrowInvalid
        return col.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy().astype(np.float64, copy=True)
    for i, v in enumerate(table.column(key).to_pylist()):
        try:
            out[i] = float(v) if v is not None else np.nan
        except (TypeError, ValueError):
            pass
    return out


def _column_as_int8(table: pa.Table | None, key: str, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.int8)
    if table is None or not has_column(table, key):
        return out
    col = table.column(key)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return _int8_charges(col.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy())  # (2**60: 0)
    from fastspec.io.meta import parse_charge

    for i, v in enumerate(col.to_pylist()):  # text ("1-", "2+", "-1") as the readers read it
        out[i] = parse_charge(v)[0]
    return out


def _int8_charges(v: np.ndarray) -> np.ndarray:
    """Charges given as numbers -> int8: NaN, inf, fractions and values beyond int8 (|v| > 127) are no
    charge, 0 (unknown), as the readers' :func:`fastspec.io.meta.parse_charge` makes ``"300"`` or
    ``"1.5"`` (until 2026-12-07 numbers were clipped to +-127 here while text gave 0)."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(v) & (v == np.round(v)) & (np.abs(v) <= 127)
    return np.where(ok, v, 0).astype(np.int8)


def _is_missing(v) -> bool:
    """None, NaN, and pandas' NA / NaT (without importing pandas)."""
    return v is None or (isinstance(v, float) and v != v) or type(v).__name__ in ("NAType", "NaTType")


def _refuse_float32_overflow(intensity) -> None:
    """FastspecError when finite intensities given as float64 (or wider) exceed float32's range: stored as
    float32 they would become inf, and the peak (often the base peak) would be dropped without a word. The
    readers reject such records."""
    a = np.asarray(intensity)
    if a.dtype.kind != "f" or a.dtype.itemsize <= 4 or a.size == 0:
        return
    with np.errstate(invalid="ignore"):
        big = np.isfinite(a) & (np.abs(a) > np.finfo(np.float32).max)
    if big.any():
        i = int(np.flatnonzero(big)[0])
        raise FastspecError(f"intensity {a[i]:g} (peak {i}) is beyond float32's range (3.4e38), in which "
                            "intensities are stored: scale the intensities down")


def _as_precursors(values) -> np.ndarray:
    """Precursor m/z given per spectrum as float64 (None, NaN and missing markers such as 'n/a' -> NaN);
    FastspecError naming the first value that is no number."""
    from fastspec.io.meta import MISSING_MARKERS

    try:
        return np.array([np.nan if _is_missing(v) else v for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        pass
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if _is_missing(v) or (isinstance(v, str) and v.strip().lower() in MISSING_MARKERS):
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise FastspecError(f"precursor_mz[{i}] = {v!r} is not a number") from None
    return out


def _clashing_columns(tables: list[pa.Table]) -> set[str]:
    """Columns whose types across ``tables`` Arrow cannot promote to one."""
    fields: dict[str, list] = {}
    for t in tables:
        for f in t.schema:
            fields.setdefault(f.name, []).append(f)
    clash = set()
    for name, fs in fields.items():
        try:
            pa.unify_schemas([pa.schema([f]) for f in fs], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            clash.add(name)
    return clash


def _stringify(table: pa.Table, names: set[str] | None = None) -> pa.Table:
    """``table`` with its non-string columns in ``names`` (default: all) as strings."""
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or (names is not None and name not in names):
            cols[name] = col
        else:
            cols[name] = pa.array([None if v is None else str(v) for v in col.to_pylist()], pa.string())
    return pa.table(cols)


def _position_ids(n: int) -> pa.Table:
    """The metadata of spectra given without any: an ``id`` column of their positions ("0", "1", ...)."""
    return _few_position_ids(n) if n <= 64 else pa.table({"id": pa.array([str(i) for i in range(n)], pa.string())})


@functools.lru_cache(maxsize=65)
def _few_position_ids(n: int) -> pa.Table:
    # tables are immutable, so one per size serves every caller: peaks-only takes of a query or a few (the
    # FAISS candidates' vectors of a one-query call) built one each, ~15 us
    return pa.table({"id": pa.array([str(i) for i in range(n)], pa.string())})


@functools.lru_cache(maxsize=256)
def _columns_of(names: tuple, key: str) -> tuple:
    """Metadata columns holding ``key``: the canonical one first, then aliases in table order (remembered
    per set of names: a search of one query asks for each of ~20 names)."""
    from fastspec.io.meta import canonical_key

    return tuple([c for c in names if c == key] + [c for c in names if c != key and canonical_key(c) == key])


#: Up to this many rows, :func:`_label_signs` parses every label in Python
_FEW_LABELS = 16


def _label_signs(arr, sign_of) -> tuple[np.ndarray, np.ndarray]:
    """``(valid, sign)`` per row of a metadata column of labels (ion modes, adducts): a column holds a few
    distinct ones, each parsed once (``sign_of``: label -> -1, 0 or 1)."""
    import pyarrow.compute as pc

    n = len(arr)
    if arr.null_count == n:
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int8)
    if n <= _FEW_LABELS:  # a query or a few: Python beats three Arrow kernels' dispatch (~0.1 ms a search call)
        vals = arr.to_pylist()
        return (np.array([v is not None for v in vals], dtype=bool),
                np.array([0 if v is None else sign_of(v) for v in vals], dtype=np.int8))
    enc = pc.dictionary_encode(arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr)
    lut = np.array([sign_of(v) for v in enc.dictionary.to_pylist()], dtype=np.int8)
    valid = ~np.asarray(pc.is_null(enc.indices), dtype=bool)
    return valid, lut[np.asarray(enc.indices.fill_null(0), dtype=np.int64)]
