"""Peak preprocessing: vectorised steps over a whole :class:`~fastspec.spectra.Spectra`, and pipelines.

Every step is a function ``Spectra -> Spectra`` that returns one spectrum per input spectrum (a spectrum
may end up with no peaks), keeps peaks sorted by m/z, and never outputs NaN, infinite, zero or negative
intensities: **every step drops invalid peaks** (m/z or intensity not finite or <= 0). The numba kernels
are in :mod:`fastspec.kernels.peaks` (parallel over spectra; ``threads`` picks the thread count).

Steps (registry :data:`STEPS`; parameter aliases accepted in strings in brackets)
---------------------------------------------------------------------------------
``sanitize(duplicates="sum")``
    Drop invalid peaks; peaks with the *same* m/z in one spectrum are merged: ``"sum"`` of intensities
    (default: conserves the ion current, like centroiding), ``"max"``, or ``"keep"``.
``mz_range(min_mz=0.0 [min, mz_from], max_mz=None [max, mz_to])``
    Keep ``min_mz <= mz <= max_mz`` (inclusive, as matchms ``select_by_mz``); None: no upper bound.
``remove_precursor(window=1.6 [da, precursor_ions_removal_da], above=True)``
    ``above=True``: drop peaks with ``mz > precursor_mz - window`` -- the precursor, its isotopes and
    anything heavier, as matchms ``remove_peaks_relative_to_precursor_mz`` (a peak exactly at
    ``precursor_mz - window`` stays, and a window at or above the precursor m/z drops every peak). ms_entropy's
    ``precursor_ions_removal_da`` (:func:`entropy_clean`, the default pipeline) differs at both edges: it
    drops the bound itself and removes nothing when the bound is not positive. ``above=False``: drop only
    ``|mz - precursor_mz| <= window``. Spectra without a precursor m/z (NaN) keep all peaks.
``merge_peaks(tolerance=0.05 [tol])``
    Da (float / ``"0.05da"``) or ppm (``"10ppm"``). ms_entropy's ``centroid_spectrum`` rule: from the most
    intense peak down (ties: higher m/z first), each peak absorbs the unmerged peaks within the tolerance
    into one peak at their intensity-weighted mean m/z with the summed intensity; repeated until all
    neighbouring peaks are at least ``tolerance`` apart. Computed in float64 (ms_entropy uses float32).
``noise_cut(relative=0.01 [noise, threshold, noise_threshold])``
    Drop peaks with ``intensity < relative * base peak``.
``top_k(k [n, n_max, max_peak_num])``
    Keep the ``k`` most intense peaks; ties keep the higher m/z; output sorted by m/z.
``normalize(how="max")``
    ``"max"`` base peak 1 (matchms), ``"sum"`` total 1 (ms_entropy), ``"l2"`` unit Euclidean norm.
``weight(mz_power=0.0, intensity_power=1.0)``
    Intensity -> ``mz**mz_power * intensity**intensity_power`` (matchms cosine weighting).
``entropy_weight()`` / ``entropy_clean(...)``
    ms_entropy's entropy weighting and ``clean_spectrum`` (kernels in :mod:`fastspec.kernels.entropy`).

Pipelines
---------
``Pipeline([("remove_precursor", {"window": 1.6}), ("noise_cut", {})])`` resolves every parameter
(defaults filled in), so ``to_config()`` is a complete JSON-serialisable record (a library stores it in its
manifest) and ``Pipeline.from_config(cfg)`` rebuilds the same pipeline. The compact string form
(``Pipeline.parse``/``to_string``) is ``"name:key=value,key=value;name2;..."``, e.g.
``"mz_range:min=0,max=2000;remove_precursor:window=1.6;noise_cut:relative=0.01"``; the whole strings
``"default"`` and ``"none"`` name :func:`default_pipeline` and the identity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from fastspec.errors import FastspecError, ParameterError
from fastspec.spectra import Spectra
from fastspec.tolerance import Tolerance, parse_tolerance

__all__ = [
    "sanitize",
    "mz_range",
    "remove_precursor",
    "merge_peaks",
    "noise_cut",
    "top_k",
    "normalize",
    "weight",
    "entropy_weight",
    "entropy_clean",
    "Pipeline",
    "default_pipeline",
    "parse_pipeline",
    "STEPS",
    "Step",
    "Param",
]

CONFIG_FORMAT = "fastspec.preprocess"
CONFIG_VERSION = 1


def _with(spectra: Spectra, result) -> Spectra:
    offsets, mz, intensity = result[:3]
    return spectra.with_peaks(offsets, mz, intensity)


def _pk():
    from fastspec.kernels import peaks  # lazy: importing fastspec compiles nothing

    return peaks


def _csr(spectra: Spectra):
    if not isinstance(spectra, Spectra):
        raise ParameterError(f"expected a Spectra, got {type(spectra).__name__}")
    return spectra.offsets, spectra.mz, spectra.intensity


# ============================================================================================ steps
def sanitize(spectra: Spectra, duplicates: str = "sum", *, return_counts: bool = False,
             threads: int | None = None):
    """Drop invalid peaks and merge peaks of identical m/z (see the module docstring).

    Parameters
    ----------
    spectra : Spectra
    duplicates : {"sum", "max", "keep"}
        What to do with several peaks at exactly the same m/z in one spectrum.
    return_counts : bool
        Also return a dict: ``n_invalid`` (peaks dropped as NaN/inf/<= 0), ``n_duplicates`` (peaks merged
        away), ``n_spectra_changed``, ``n_spectra_emptied``.
    threads : int, optional
        Numba threads (default all).

    Returns
    -------
    Spectra, or (Spectra, dict) with ``return_counts``
    """
    k = _pk()
    res = k.sanitize_csr(*_csr(spectra), duplicates=duplicates, threads=threads)
    n_invalid, n_dup = res[3], res[4]
    if res[5].any():
        # NaN m/z can hide unsorted peaks from Spectra's sort check: drop invalid peaks, sort, merge again
        from fastspec.spectra import sort_peaks_csr

        o, m, i = k.sanitize_csr(*_csr(spectra), duplicates="keep", threads=threads)[:3]
        m, i, _ = sort_peaks_csr(o, m, i)
        res = k.sanitize_csr(o, m, i, duplicates=duplicates, threads=threads)
        n_dup = res[4]
    out = _with(spectra, res)
    if not return_counts:
        return out
    before = spectra.n_peaks
    after = out.n_peaks
    counts = {
        "n_invalid": int(n_invalid.sum()),
        "n_duplicates": int(n_dup.sum()),
        "n_spectra_changed": int(np.count_nonzero(n_invalid + n_dup)),
        "n_spectra_emptied": int(np.count_nonzero((before > 0) & (after == 0))),
    }
    return out, counts


def mz_range(spectra: Spectra, min_mz: float = 0.0, max_mz: float | None = None, *,
             threads: int | None = None) -> Spectra:
    """Keep peaks with ``min_mz <= mz <= max_mz`` (m/z units; ``max_mz`` None or inf: no upper bound)."""
    hi = math.inf if max_mz is None else max_mz
    if hi == math.inf and isinstance(spectra, Spectra) and isinstance(min_mz, (int, float)) and math.isfinite(min_mz):
        mz, x = spectra.mz, spectra.intensity
        # nothing to drop, the invalid peaks every step drops included (finite and > 0, as kernels.peaks._ok
        # has them): the default pipeline's step after sanitize. No copy, and ~15 us less of a one-query search
        if bool(((mz >= min_mz) & (mz > 0) & (mz < math.inf) & (x > 0) & (x < math.inf)).all()):
            return spectra
    return _with(spectra, _pk().mz_range_csr(*_csr(spectra), min_mz=min_mz, max_mz=hi, threads=threads))


def remove_precursor(spectra: Spectra, window: float = 1.6, above: bool = True, *,
                     threads: int | None = None) -> Spectra:
    """Remove precursor ions: ``mz > precursor_mz - window`` (``above``), else ``|mz - precursor_mz| <= window``.

    ``window`` is in Da. Spectra with unknown precursor m/z (NaN) are left alone.
    """
    return _with(spectra, _pk().remove_precursor_csr(*_csr(spectra), spectra.precursor_mz, window=window,
                                                     above=above, threads=threads))


def merge_peaks(spectra: Spectra, tolerance: "float | str | Tolerance" = 0.05, *,
                threads: int | None = None) -> Spectra:
    """Merge peaks closer than ``tolerance`` (Da, or ``"10ppm"``) by ms_entropy's centroid rule."""
    tol = parse_tolerance(tolerance)
    return _with(spectra, _pk().merge_peaks_csr(*_csr(spectra), da=tol.da, ppm=tol.ppm, threads=threads))


def noise_cut(spectra: Spectra, relative: float = 0.01, *, threads: int | None = None) -> Spectra:
    """Drop peaks below ``relative`` times the spectrum's base peak (``relative`` in [0, 1]); compared as
    ``intensity / base >= relative``, as matchms' ``select_by_relative_intensity`` does."""
    return _with(spectra, _pk().noise_cut_csr(*_csr(spectra), relative=relative, threads=threads))


def top_k(spectra: Spectra, k: int, *, threads: int | None = None) -> Spectra:
    """Keep the ``k`` most intense peaks of every spectrum (ties: higher m/z kept), sorted by m/z."""
    return _with(spectra, _pk().top_k_csr(*_csr(spectra), k=k, threads=threads))


def normalize(spectra: Spectra, how: str = "max", *, threads: int | None = None) -> Spectra:
    """Scale intensities per spectrum: ``"max"`` (base peak 1), ``"sum"`` (total 1) or ``"l2"`` (unit norm)."""
    return _with(spectra, _pk().normalize_csr(*_csr(spectra), how=how, threads=threads))


def weight(spectra: Spectra, mz_power: float = 0.0, intensity_power: float = 1.0, *,
           threads: int | None = None) -> Spectra:
    """Intensities -> ``mz**mz_power * intensity**intensity_power`` (float64 math, float32 result)."""
    return _with(spectra, _pk().weight_csr(*_csr(spectra), mz_power=mz_power, intensity_power=intensity_power,
                                           threads=threads))


def entropy_weight(spectra: Spectra, *, threads: int | None = None) -> Spectra:
    """ms_entropy's entropy weighting of intensities (``apply_weight_to_intensity``), per spectrum.

    Uses :func:`fastspec.kernels.entropy.entropy_weight_csr`.
    """
    from fastspec.kernels.entropy import entropy_weight_csr

    # invalid peaks (negative, NaN) out first: the weights are normalised over the peaks that stay
    spectra = sanitize(spectra, duplicates="keep", threads=threads)
    offsets, mz, intensity = _csr(spectra)
    new = np.asarray(entropy_weight_csr(offsets, intensity), dtype=np.float32)
    if new.shape != intensity.shape:
        raise FastspecError("entropy_weight_csr returned the wrong number of intensities")
    # weighting keeps every peak; re-run the validity rule so no step can output a zero/NaN intensity
    return sanitize(spectra.with_peaks(offsets, mz, new), duplicates="keep", threads=threads)


def entropy_clean(spectra: Spectra, min_mz: float = -1.0, max_mz: float = -1.0, noise_threshold: float = 0.01,
                  min_ms2_difference_in_da: float = 0.05, min_ms2_difference_in_ppm: float = -1.0,
                  max_peak_num: int = -1, normalize_intensity: bool = True,
                  precursor_ions_removal_da: float | None = 1.6, *, threads: int | None = None) -> Spectra:
    """ms_entropy's ``clean_spectrum`` (as ``FlashEntropySearch.clean_spectrum_for_search`` calls it) on
    every spectrum; parameter names and meanings are ms_entropy's (-1 disables a limit). With a precursor
    m/z, ``max_mz`` is the lower of ``max_mz`` and ``precursor_mz - precursor_ions_removal_da``.

    Uses :func:`fastspec.kernels.entropy.clean_csr`.
    """
    from fastspec.kernels.entropy import clean_csr

    offsets, mz, intensity = _csr(spectra)
    res = clean_csr(offsets, mz, intensity, spectra.precursor_mz, min_mz=min_mz, max_mz=max_mz,
                    noise_threshold=noise_threshold, min_ms2_difference_in_da=min_ms2_difference_in_da,
                    min_ms2_difference_in_ppm=min_ms2_difference_in_ppm, max_peak_num=max_peak_num,
                    normalize_intensity=normalize_intensity, precursor_ions_removal_da=precursor_ions_removal_da,
                    threads=threads)
    return _with(spectra, res)


# ============================================================================================ registry
def _to_float(v, name):
    if isinstance(v, bool):
        raise ParameterError(f"{name}: expected a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}: expected a number, got {v!r}") from None
    if math.isnan(f):
        raise ParameterError(f"{name}: NaN is not allowed")
    return f


def _conv_float(v, name):
    f = _to_float(v, name)
    if math.isinf(f):
        raise ParameterError(f"{name}: must be finite, got {v!r}")
    return f


def _conv_float_or_none(v, name):
    if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null", "", "inf", "+inf")):
        return None
    f = _to_float(v, name)
    return None if f == math.inf else f


def _conv_int(v, name):
    if isinstance(v, bool):
        raise ParameterError(f"{name}: expected an integer, got {v!r}")
    if isinstance(v, str):
        v = v.strip()
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}: expected an integer, got {v!r}") from None
    if not f.is_integer():
        raise ParameterError(f"{name}: expected an integer, got {v!r}")
    return int(f)


def _conv_bool(v, name):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("false", "no", "0", "off"):
        return False
    raise ParameterError(f"{name}: expected true/false, got {v!r}")


def _conv_str(v, name):
    if not isinstance(v, str):
        raise ParameterError(f"{name}: expected a string, got {v!r}")
    return v.strip()


def _conv_tolerance(v, name):
    if isinstance(v, str):
        v = v.strip()
    return str(parse_tolerance(v, name))


_CONVERTERS = {
    "float": _conv_float,
    "float?": _conv_float_or_none,
    "int": _conv_int,
    "bool": _conv_bool,
    "str": _conv_str,
    "tolerance": _conv_tolerance,
}


@dataclass(frozen=True)
class Param:
    """One step parameter: ``kind`` is float, float? (None allowed), int, bool, str or tolerance."""

    name: str
    kind: str
    default: Any = None
    required: bool = False
    aliases: tuple = ()
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None

    def convert(self, value: Any, step: str) -> Any:
        label = f"{step}.{self.name}"
        v = _CONVERTERS[self.kind](value, label)
        if self.choices and v not in self.choices:
            raise ParameterError(f"{label}: expected one of {', '.join(map(str, self.choices))}, got {value!r}")
        if v is not None and not isinstance(v, (str, bool)):
            if self.minimum is not None and v < self.minimum:
                raise ParameterError(f"{label}: must be >= {self.minimum}, got {value!r}")
            if self.maximum is not None and v > self.maximum:
                raise ParameterError(f"{label}: must be <= {self.maximum}, got {value!r}")
        return v


@dataclass(frozen=True)
class Step:
    """A registered preprocessing step: its function, parameters and a one-line description."""

    name: str
    func: Callable
    params: tuple
    summary: Callable[[dict], str]
    takes_threads: bool = True
    #: ``check(params) -> str | None``: what is wrong with the parameters together (None: nothing)
    check: Callable[[dict], str | None] | None = None

    def resolve(self, params: Mapping[str, Any] | None) -> dict:
        """Complete, validated parameters (aliases mapped, defaults filled in)."""
        params = dict(params or {})
        lookup = {}
        for p in self.params:
            lookup[p.name] = p
            for a in p.aliases:
                lookup[a] = p
        out: dict[str, Any] = {}
        for key, value in params.items():
            p = lookup.get(str(key).strip())
            if p is None:
                known = ", ".join(p.name for p in self.params) or "none"
                raise ParameterError(f"step {self.name!r} has no parameter {key!r} (parameters: {known})")
            if p.name in out:
                raise ParameterError(f"step {self.name!r}: parameter {p.name!r} given twice")
            out[p.name] = p.convert(value, self.name)
        for p in self.params:
            if p.name not in out:
                if p.required:
                    raise ParameterError(f"step {self.name!r} needs parameter {p.name!r}")
                out[p.name] = p.default
        if self.check is not None:  # relations between parameters, at parse time rather than at run time
            why = self.check(out)
            if why:
                raise ParameterError(f"step {self.name!r}: {why}")
        return {p.name: out[p.name] for p in self.params}

    def __call__(self, spectra: Spectra, params: Mapping[str, Any] | None = None, threads: int | None = None):
        return self.run_resolved(spectra, self.resolve(params), threads)

    def run_resolved(self, spectra: Spectra, params: dict, threads: int | None = None):
        """Run with parameters :meth:`resolve` already completed (a :class:`Pipeline` holds them so)."""
        if self.takes_threads:
            return self.func(spectra, **params, threads=threads)
        return self.func(spectra, **params)


def _fmt(v) -> str:
    """Short display form of a parameter value (None is an open bound)."""
    return "inf" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def _exact(v) -> str:
    """Round-tripping string form of a parameter value for :meth:`Pipeline.to_string`."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        r = repr(v)
        return r[:-2] if r.endswith(".0") else r
    return str(v)


#: Registered steps by name.
STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("sanitize", sanitize,
             (Param("duplicates", "str", "sum", choices=("sum", "max", "keep")),),
             lambda p: f"drop NaN/inf/non-positive peaks; peaks with equal m/z: {p['duplicates']}"),
        Step("mz_range", mz_range,
             (Param("min_mz", "float", 0.0, aliases=("min", "mz_from")),
              Param("max_mz", "float?", None, aliases=("max", "mz_to"))),
             lambda p: f"keep {_fmt(p['min_mz'])} <= m/z <= {_fmt(p['max_mz'])}",
             check=lambda p: (f"min_mz {p['min_mz']:g} is above max_mz {p['max_mz']:g}"
                              if p["max_mz"] is not None and p["min_mz"] > p["max_mz"] else None)),
        Step("remove_precursor", remove_precursor,
             (Param("window", "float", 1.6, aliases=("da", "precursor_ions_removal_da"), minimum=0.0),
              Param("above", "bool", True)),
             lambda p: (f"drop peaks with m/z > precursor_mz - {_fmt(p['window'])}" if p["above"]
                        else f"drop peaks within {_fmt(p['window'])} Da of precursor_mz")),
        Step("merge_peaks", merge_peaks,
             (Param("tolerance", "tolerance", "0.05da", aliases=("tol",)),),
             lambda p: f"merge peaks closer than {p['tolerance']} (ms_entropy centroid rule)"),
        Step("noise_cut", noise_cut,
             (Param("relative", "float", 0.01, aliases=("noise", "threshold", "noise_threshold"),
                    minimum=0.0, maximum=1.0),),
             lambda p: f"drop peaks below {_fmt(p['relative'])} x base peak"),
        Step("top_k", top_k,
             (Param("k", "int", None, required=True, aliases=("n", "n_max", "max_peak_num"), minimum=1),),
             lambda p: f"keep the {p['k']} most intense peaks"),
        Step("normalize", normalize,
             (Param("how", "str", "max", choices=("max", "sum", "l2")),),
             lambda p: f"normalise intensities ({p['how']} = 1)"),
        Step("weight", weight,
             (Param("mz_power", "float", 0.0), Param("intensity_power", "float", 1.0)),
             lambda p: f"intensity -> mz^{_fmt(p['mz_power'])} * intensity^{_fmt(p['intensity_power'])}"),
        Step("entropy_weight", entropy_weight, (),
             lambda p: "ms_entropy entropy weighting of intensities"),
        Step("entropy_clean", entropy_clean,
             (Param("min_mz", "float", -1.0), Param("max_mz", "float", -1.0),
              Param("noise_threshold", "float", 0.01, minimum=0.0, maximum=1.0),
              Param("min_ms2_difference_in_da", "float", 0.05), Param("min_ms2_difference_in_ppm", "float", -1.0),
              Param("max_peak_num", "int", -1), Param("normalize_intensity", "bool", True),
              Param("precursor_ions_removal_da", "float?", 1.6)),
             lambda p: "ms_entropy clean_spectrum(" + ", ".join(f"{k}={'none' if v is None else _fmt(v)}"
                                                                for k, v in p.items()) + ")"),
    )
}


def _get_step(name: str) -> Step:
    key = str(name).strip()
    if key not in STEPS:
        raise ParameterError(f"unknown preprocessing step {name!r}; known: {', '.join(STEPS)} (a pipeline string "
                             "is 'name:key=value,...;name2', e.g. 'mz_range:min=50;top_k:k=100')")
    return STEPS[key]


# ============================================================================================ pipeline
class Pipeline:
    """An ordered list of preprocessing steps with fully resolved parameters.

    Parameters
    ----------
    steps : iterable
        Each item is a step name, a ``(name, params)`` pair or a ``{"name": ..., "params": {...}}`` dict.

    Examples
    --------
    >>> p = Pipeline([("remove_precursor", {"window": 1.6}), ("noise_cut", {"relative": 0.01})])
    >>> clean = p(spectra)                                   # doctest: +SKIP
    >>> Pipeline.from_config(p.to_config()) == p
    True
    """

    __slots__ = ("steps",)

    def __init__(self, steps: Iterable = ()):
        resolved = []
        if isinstance(steps, (str, bytes, Mapping)):
            raise ParameterError("Pipeline(steps): expected a list of steps; use Pipeline.parse / from_config")
        for item in steps:
            if isinstance(item, str):
                name, params = item, {}
            elif isinstance(item, Mapping):
                if "name" not in item:
                    raise ParameterError(f"pipeline step {item!r} has no 'name'")
                extra = set(item) - {"name", "params"}
                if extra:
                    raise ParameterError(f"pipeline step {item!r}: unexpected keys {sorted(extra)}")
                name, params = item["name"], item.get("params") or {}
            elif isinstance(item, (tuple, list)) and len(item) in (1, 2):
                name, params = item[0], (item[1] if len(item) == 2 else None) or {}
            else:
                raise ParameterError(f"pipeline step must be a name, (name, params) or a dict, got {item!r}")
            if not isinstance(params, Mapping):
                raise ParameterError(f"parameters of step {name!r} must be a mapping, got {params!r}")
            step = _get_step(name)
            resolved.append((step.name, step.resolve(params)))
        self.steps: tuple[tuple[str, dict], ...] = tuple(resolved)

    # ------------------------------------------------------------------ construction
    @classmethod
    def none(cls) -> "Pipeline":
        """The identity pipeline (peaks stay as read; :class:`Spectra` already sorts them)."""
        return cls(())

    @classmethod
    def from_config(cls, config: Mapping | Sequence) -> "Pipeline":
        """Rebuild from :meth:`to_config` output (a plain list of steps is accepted too)."""
        if isinstance(config, Mapping):
            fmt = config.get("format", CONFIG_FORMAT)
            if fmt != CONFIG_FORMAT:
                raise ParameterError(f"not a preprocessing config (format {fmt!r})")
            version = config.get("version", CONFIG_VERSION)
            if version != CONFIG_VERSION:
                raise ParameterError(f"preprocessing config version {version!r} is not supported "
                                     f"(this fastspec reads version {CONFIG_VERSION})")
            if "steps" not in config:
                raise ParameterError("preprocessing config has no 'steps'")
            steps = config["steps"]
        else:
            steps = config
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
            raise ParameterError("preprocessing config: 'steps' must be a list")
        return cls(steps)

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        """Parse the compact form ``"name:key=value,key=value;name2"`` (or ``"default"`` / ``"none"``).

        Values: numbers, ``true``/``false``, ``none``/``inf`` (no bound), tolerances like ``10ppm``. Leading
        values may be given without their key, in the step's parameter order (``"top_k:50"``,
        ``"mz_range:50,2000"``).
        """
        if not isinstance(text, str):
            raise ParameterError(f"expected a pipeline string, got {type(text).__name__}")
        s = text.strip()
        if s.lower() == "default":
            return default_pipeline()
        if s.lower() in ("none", ""):
            return cls.none()
        steps = []
        for chunk in s.split(";"):
            chunk = chunk.strip()
            if not chunk:
                continue
            name, _, rest = chunk.partition(":")
            params: dict[str, str] = {}
            step = _get_step(name)
            keyword_seen = False
            for pos, kv in enumerate(filter(None, (x.strip() for x in rest.split(",")))):
                key, eq, value = kv.partition("=")
                if not eq:  # positional value: "top_k:50", "mz_range:0,2000"
                    if keyword_seen or pos >= len(step.params):
                        raise ParameterError(f"pipeline string: expected key=value in step {name.strip()!r}, got {kv!r}")
                    key, value = step.params[pos].name, kv
                else:
                    keyword_seen = True
                if not key.strip():
                    raise ParameterError(f"pipeline string: expected key=value in step {name.strip()!r}, got {kv!r}")
                if key.strip() in params:
                    raise ParameterError(f"pipeline string: {key.strip()!r} given twice in step {name.strip()!r}")
                params[key.strip()] = value.strip()
            steps.append((name.strip(), params))
        return cls(steps)

    from_string = parse

    # ------------------------------------------------------------------ serialisation
    def to_config(self) -> dict:
        """JSON-serialisable description: ``{"format", "version", "steps": [{"name", "params"}]}``."""
        return {
            "format": CONFIG_FORMAT,
            "version": CONFIG_VERSION,
            "steps": [{"name": n, "params": dict(p)} for n, p in self.steps],
        }

    def to_string(self) -> str:
        """Compact form, parsed back by :meth:`parse` (``"none"`` for the identity)."""
        if not self.steps:
            return "none"
        parts = []
        for n, p in self.steps:
            kv = ",".join(f"{k}={_exact(v)}" for k, v in p.items())
            parts.append(f"{n}:{kv}" if kv else n)
        return ";".join(parts)

    def describe(self) -> str:
        """Human-readable, one numbered line per step."""
        if not self.steps:
            return "no preprocessing (peaks as read, sorted by m/z)"
        return "\n".join(f"{i}. {n}: {STEPS[n].summary(p)}" for i, (n, p) in enumerate(self.steps, 1))

    # ------------------------------------------------------------------ running
    def __call__(self, spectra: Spectra, threads: int | None = None) -> Spectra:
        """Apply every step in order; one output spectrum per input spectrum."""
        from fastspec.kernels._config import check_threads

        check_threads(threads)
        for n, p in self.steps:
            spectra = STEPS[n].run_resolved(spectra, p, threads)
        return spectra

    def run(self, spectra: Spectra, threads: int | None = None) -> tuple[Spectra, list[dict]]:
        """Like calling the pipeline, plus per-step counts: ``step``, ``peaks_in``, ``peaks_out``,
        ``spectra_emptied`` (spectra that had peaks before the step and none after)."""
        from fastspec.kernels._config import check_threads

        check_threads(threads)
        report = []
        for n, p in self.steps:
            before = spectra.n_peaks
            spectra = STEPS[n](spectra, p, threads=threads)
            after = spectra.n_peaks
            report.append({"step": n, "peaks_in": int(before.sum()), "peaks_out": int(after.sum()),
                           "spectra_emptied": int(np.count_nonzero((before > 0) & (after == 0)))})
        return spectra, report

    # ------------------------------------------------------------------ protocol
    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self):
        return iter(self.steps)

    def __eq__(self, other) -> bool:
        return isinstance(other, Pipeline) and self.steps == other.steps

    __hash__ = None

    def __add__(self, other: "Pipeline") -> "Pipeline":
        return Pipeline(list(self.steps) + list(other.steps))

    def __repr__(self) -> str:
        return f"Pipeline({self.to_string()!r})"


def parse_pipeline(text: str) -> Pipeline:
    """Same as :meth:`Pipeline.parse`."""
    return Pipeline.parse(text)


def default_pipeline(min_mz: float = 0.0, max_mz: float | None = None, remove_precursor: float | None = 1.6,
                     merge: "float | str | None" = 0.05, noise: float | None = 0.01,
                     top_k: int | None = None) -> Pipeline:
    """The library-search default: ms_entropy's ``clean_spectrum_for_search`` to the bit, without its
    final sum-normalisation (scores are scale-invariant, raw intensities stay available).

    So the peaks an open entropy search scores are those ms_entropy's ``FlashEntropySearch`` scores.
    Its arithmetic is float32 (m/z included) and its comparisons inclusive, which decides borderline
    cases: whether peaks 0.05 Da apart merge depends on their m/z's float32 rounding (100 and 100.05 do
    not, 300 and 300.05 do, in ms_entropy too), a peak at exactly 1% of the base peak stays. The separate
    steps (``remove_precursor``, ``merge_peaks``, ``noise_cut``, ``top_k``) compute in float64 instead,
    and merged differently in 0.3% of the 62k MassBank spectra.

    Steps, in order:

    1. ``sanitize`` -- drop NaN/inf/non-positive peaks; peaks at identical m/z are left to step 3's
       centroiding, as ms_entropy leaves them (summed here when ``merge`` is None);
    2. ``mz_range(min_mz, max_mz)`` -- default: all m/z;
    3. ``entropy_clean`` (:func:`entropy_clean`, ``normalize_intensity=False``), which

       * drops peaks with ``mz >= precursor_mz - remove_precursor`` where that bound is positive (the
         precursor and its isotopes dominate spectra but say little about structure; Li & Fiehn 2023);
       * centroids peaks ``merge`` apart or closer (0.05 Da; a float in Da, or ``"10ppm"``), so that
         matching peaks at the usual 0.01-0.02 Da search tolerance is unambiguous;
       * drops peaks below ``noise`` (1%) of the base peak;
       * keeps the ``top_k`` most intense peaks, when ``top_k`` is given.

    Pass None to leave out a part of step 3 (all None: no step 3).
    """
    # entropy_clean takes ms_entropy's values as they are (a negative precursor window or top-k means
    # something there or nothing): refuse what the separate steps refused
    if remove_precursor is not None and not _to_float(remove_precursor, "remove_precursor") >= 0:
        raise ParameterError(f"remove_precursor must be >= 0 Da, got {remove_precursor!r}")
    if noise is not None and not 0 <= _to_float(noise, "noise") <= 1:
        raise ParameterError(f"noise must be within [0, 1], got {noise!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ParameterError(f"top_k must be an integer >= 1, got {top_k!r}")
    # peaks at one m/z: the centroiding merges them as ms_entropy does (an intensity-weighted float32 mean,
    # which can move the m/z by an ulp and so decide a match at the window's edge); summed only without it
    steps: list[tuple[str, dict]] = [("sanitize", {"duplicates": "sum" if merge is None else "keep"}),
                                     ("mz_range", {"min_mz": min_mz, "max_mz": max_mz})]
    if (remove_precursor, merge, noise, top_k) == (None,) * 4:
        return Pipeline(steps)
    params: dict[str, Any] = {"min_mz": -1.0, "max_mz": -1.0, "noise_threshold": 0.0 if noise is None else noise,
                              "min_ms2_difference_in_da": 0.0, "min_ms2_difference_in_ppm": -1.0,
                              "max_peak_num": -1 if top_k is None else top_k, "normalize_intensity": False,
                              "precursor_ions_removal_da": remove_precursor}
    if merge is not None:  # None: 0 Da, which only merges identical m/z (sanitize did)
        tol = parse_tolerance(merge)
        if tol.ppm > 0:
            params["min_ms2_difference_in_da"], params["min_ms2_difference_in_ppm"] = -1.0, tol.ppm
        else:
            params["min_ms2_difference_in_da"] = tol.da
    steps.append(("entropy_clean", params))
    return Pipeline(steps)
