import numpy as np
import pytest

from fastspec.errors import FastspecError
from fastspec.tolerance import Tolerance, parse_tolerance


@pytest.mark.parametrize(
    "text,value,unit",
    [(0.02, 0.02, "da"), (1, 1.0, "da"), ("0.02da", 0.02, "da"), ("0.02 Da", 0.02, "da"), ("10ppm", 10.0, "ppm"),
     ("10 PPM", 10.0, "ppm"), ("5mDa", 0.005, "da"), ("1e-2", 0.01, "da"), (".5", 0.5, "da"),
     (np.float32(0.02), float(np.float32(0.02)), "da"), (np.int64(1), 1.0, "da")],
)
def test_parse(text, value, unit):
    t = parse_tolerance(text)
    assert t.unit == unit and t.value == pytest.approx(value)
    assert parse_tolerance(str(t)) == t


@pytest.mark.parametrize("bad", ["", "abc", "-1da", "10 furlongs", None, True, np.bool_(True), float("nan"), float("inf"),
                                 -0.1, np.float32("nan"), "1e6ppm", "1000000 ppm", "1e12ppm",
                                 pytest.param(10**400, id="10**400")])
def test_refuse(bad):
    with pytest.raises(FastspecError):
        parse_tolerance(bad)


def test_windows():
    assert Tolerance(10, "ppm").at(500.0) == pytest.approx(0.005)
    assert Tolerance(0.02).at(500.0) == 0.02
    assert (Tolerance(10, "ppm").da, Tolerance(10, "ppm").ppm) == (0.0, 10)


def test_tolerance_objects_are_checked_when_made():
    """A Tolerance built directly gets the checks parse_tolerance applies (a NaN window crashed the kernels;
    an upper-case unit matched with a zero window)."""
    assert Tolerance(10, "PPM") == parse_tolerance("10ppm") and Tolerance(10, "PPM").ppm == 10.0
    assert Tolerance(5, "mDa") == Tolerance(0.005, "da")
    assert parse_tolerance(Tolerance(0.02)) == Tolerance(0.02, "da")
    for bad in [(float("nan"),), (float("nan"), "ppm"), (-0.02,), (float("inf"),), (1e6, "ppm"), (1.0, "furlong"),
                ("0.02",), (True,), (10**400,)]:
        with pytest.raises(FastspecError):
            Tolerance(*bad)
    assert Tolerance(999_999.0, "ppm").ppm == 999_999.0


@pytest.mark.parametrize("bad,words", [("-1da", "non-negative"), ("1e999ppm", "non-negative"),
                                       (float("nan"), "non-negative"), (-0.1, "non-negative"),
                                       pytest.param(10**400, "non-negative", id="10**400"), ("1e6ppm", "below 1e6")])
def test_refusal_names_option_and_text_once(bad, words):
    """The range checks live in Tolerance alone; parse_tolerance rewords them to name the option and the value as
    given (10**400 was a bare OverflowError from parse_tolerance)."""
    with pytest.raises(FastspecError) as e:
        parse_tolerance(bad, "--tolerance")
    msg = str(e.value)
    # a value with hundreds of digits is cut short
    shown = "10000000000000000000...00000000 (401 characters)" if bad == 10**400 else repr(bad)
    assert msg.startswith("--tolerance: ") and words in msg and msg.endswith(f"got {shown}") and "\n" not in msg
    assert msg.count("tolerance") == 1 and len(msg) < 120


def test_direct_refusal_message():
    with pytest.raises(FastspecError, match=r"^tolerance must be a finite non-negative value, got -1\.0$"):
        Tolerance(-1.0)
    with pytest.raises(FastspecError, match=r"^tolerance ppm value must be below 1e6, got '1e\+06ppm'$"):
        Tolerance(1e6, "ppm")


def test_negative_zero_is_zero():
    for tol in (parse_tolerance("-0da"), parse_tolerance(-0.0), Tolerance(-0.0, "ppm")):
        assert tol.value == 0.0 and str(tol.value) == "0.0"
