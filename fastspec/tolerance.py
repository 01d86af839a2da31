"""Mass tolerances in Da or ppm.

A float means Da; strings such as ``"0.02da"``, ``"0.02 Da"``, ``"10ppm"`` are parsed.
"""
from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

from fastspec.errors import ParameterError

# a sign is accepted so that "-1" is refused as negative rather than as unparseable
# (one way to match a number's digits: "[0-9]*\.?[0-9]+" took quadratic time on a long run of them)
_TOL_RE = re.compile(r"^\s*([-+]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*(?:(da|ppm|mda)\s*)?$",
                     re.IGNORECASE)
_NOT_FINITE = "must be a finite non-negative value"


def _shown(value) -> str:
    """``repr(value)``, cut short: an int beyond float range (10**400) has hundreds of digits."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"


def _refused(reason: str, got) -> ParameterError:
    """The error Tolerance raises; ``reason`` is kept so parse_tolerance can name what the user typed instead."""
    err = ParameterError(f"tolerance {reason}, got {_shown(got)}")
    err.reason = reason
    return err


@dataclass(frozen=True)
class Tolerance:
    """A mass tolerance.

    Attributes
    ----------
    value : float
        Magnitude, in ``unit``.
    unit : {"da", "ppm"}
        Absolute (Dalton) or relative (parts per million of the m/z being matched); ``"mda"`` (millidalton)
        is accepted when built and stored as Da.
    """

    value: float
    unit: str = "da"

    def __post_init__(self):
        # the one place tolerances are checked, whether built directly (Tolerance(10, "PPM")) or by
        # parse_tolerance: kernels given a NaN window crash and an unknown unit would match with a zero window
        unit = self.unit.lower() if isinstance(self.unit, str) else self.unit
        if unit not in ("da", "ppm", "mda"):
            raise _refused("unit must be 'da', 'mda' or 'ppm'", self.unit)
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real):
            raise _refused("value must be a number", self.value)
        try:
            value = float(self.value)
        except OverflowError:  # an int beyond float range (10**400)
            raise _refused(_NOT_FINITE, self.value) from None
        if unit == "mda":
            value, unit = value / 1000.0, "da"
        if not (value >= 0.0) or value == float("inf"):
            raise _refused(_NOT_FINITE, self.value)
        if unit == "ppm" and value >= 1e6:  # a window as wide as the m/z itself: no MS/MS tolerance
            raise _refused("ppm value must be below 1e6", f"{value:g}ppm")
        object.__setattr__(self, "value", abs(value))  # -0.0 passes the check above: store it as 0.0
        object.__setattr__(self, "unit", unit)

    @property
    def da(self) -> float:
        """Absolute part passed to kernels (0.0 when the tolerance is relative)."""
        return self.value if self.unit == "da" else 0.0

    @property
    def ppm(self) -> float:
        """Relative part passed to kernels (0.0 when the tolerance is absolute)."""
        return self.value if self.unit == "ppm" else 0.0

    def at(self, mz: float) -> float:
        """Absolute window half-width in Da at a given m/z."""
        return self.value if self.unit == "da" else mz * self.value * 1e-6

    def __str__(self) -> str:  # round-trips through parse_tolerance
        return f"{self.value!r}{self.unit}"  # repr: exact round trip (":g" keeps 6 digits)


def parse_tolerance(tol: "float | int | str | Tolerance", name: str = "tolerance") -> Tolerance:
    """Parse a tolerance given as a float (Da), a string (``"0.02da"``, ``"10ppm"``) or a Tolerance.

    Raises
    ------
    ParameterError
        If the value cannot be parsed, is negative or not finite, or is a ppm value of 1e6 or more.
    """
    if isinstance(tol, Tolerance):
        return tol
    if isinstance(tol, bool) or type(tol).__name__ == "bool_":
        raise ParameterError(f"{name}: expected a number or a string like '0.02da' or '10ppm', got {tol!r}")
    if isinstance(tol, numbers.Real):  # numpy scalars too (np.float32(0.02), np.int64(1)); Tolerance converts
        value, unit = tol, "da"
    elif isinstance(tol, str):
        m = _TOL_RE.match(tol)
        if not m:
            raise ParameterError(f"{name}: cannot parse {tol!r}; use e.g. '0.02da' or '10ppm'")
        value, unit = float(m.group(1)), (m.group(2) or "da").lower()
    else:
        raise ParameterError(f"{name}: expected a number or a string like '0.02da' or '10ppm', got {tol!r}")
    try:
        return Tolerance(value, unit)  # range checks live in Tolerance.__post_init__ only
    except ParameterError as e:  # name the option and the text as given ('-1da', not -1.0)
        raise ParameterError(f"{name}: {getattr(e, 'reason', e)}, got {_shown(tol)}") from None
