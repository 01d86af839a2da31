"""Fuzzing the text readers: mutated MGF/MSP/TSV must end in spectra or a FastspecError, never in any
other exception, and the report must add up."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastspec.io as fio
from fastspec.errors import FastspecError

DATA = Path(__file__).parent / "data"
SEEDS = {
    "mgf": ["mgf_gnps.mgf", "mgf_massspecgym.mgf", "mgf_mzmine.mgf", "mgf_crlf_notitle.mgf"],
    "msp": ["msp_nist.msp", "msp_msdial.msp", "msp_massbank.msp"],
    "tsv": ["massspecgym.tsv"],
}
NASTY = [b"NaN", b"nan", b"inf", b"-inf", b"1e999", b"-1e999", b"1e-400", b"-5", b"0", b"abc", b"", b"+", b".",
         b"9" * 40, b"1.7976931348623157e309", b"3.5e38", b"1e39", b"\x00", b"\xff\xfe", b"=", b":", b";",
         b'"', b"BEGIN IONS", b"END IONS", b"Name:", b"Num Peaks: 999", b"1 2 3 4 5", b"\t\t"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        i = rng.randrange(len(lines)) if lines else 0
        if op == 0 and data:
            return b"\n".join(lines)[: rng.randrange(len(data))]  # truncation
        if not lines:
            lines = [b""]
            i = 0
        if op == 1:
            del lines[i]
        elif op == 2:
            lines.insert(i, lines[i])
        elif op == 3:
            lines.insert(i, bytes(rng.randrange(256) for _ in range(rng.randint(1, 30))))
        elif op == 4:
            toks = lines[i].split()
            if toks:
                toks[rng.randrange(len(toks))] = rng.choice(NASTY)
                lines[i] = b" ".join(toks)
        elif op == 5:
            lines = [ln for ln in lines if ln.strip().upper() not in (b"END IONS", b"BEGIN IONS") or rng.random() < .5]
        elif op == 6:
            lines = [ln for ln in lines if not (ln[:1].isdigit() and rng.random() < .7)]  # empty peak lists
        elif op == 7:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines.insert(i, rng.choice(NASTY) + b" " + rng.choice(NASTY))
    return b"\n".join(lines)


def check_read(path: Path, fmt: str) -> None:
    try:
        sp, report = fio.read(path, format=fmt, return_report=True)
    except FastspecError:
        return  # e.g. a TSV whose header lost its peak columns
    report.check()
    assert report.n_spectra == len(sp)
    if len(sp):
        assert sp.offsets[0] == 0 and np.all(np.diff(sp.offsets) > 0)  # no empty spectrum
        assert np.isfinite(sp.mz).all() and (sp.mz > 0).all()
        assert np.isfinite(sp.intensity).all() and (sp.intensity >= 0).all()
        seg0 = np.repeat(np.arange(len(sp)), np.diff(sp.offsets))
        assert (np.bincount(seg0[sp.intensity > 0], minlength=len(sp)) > 0).all()  # a positive one in each
        seg = np.repeat(np.arange(len(sp)), np.diff(sp.offsets))
        assert not (np.diff(sp.mz) < 0)[seg[1:] == seg[:-1]].any()
        p = sp.precursor_mz
        assert (np.isnan(p) | (p > 0)).all()
    try:
        fio.read(path, format=fmt, on_error="raise")
    except FastspecError:
        pass


@pytest.mark.parametrize("fmt", ["mgf", "msp", "tsv"])
def test_seeded_mutations(tmp_path, fmt):
    rng = random.Random(1234)
    seeds = [(DATA / name).read_bytes() for name in SEEDS[fmt]]
    for case in range(120 if fmt != "tsv" else 60):
        data = mutate(rng.choice(seeds), rng)
        path = tmp_path / f"case{case}.{fmt}"
        path.write_bytes(data)
        check_read(path, fmt)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), fmt=st.sampled_from(["mgf", "msp"]))
def test_random_bytes(tmp_path, data, fmt):
    path = tmp_path / f"rand.{fmt}"
    path.write_bytes(data)
    check_read(path, fmt)


LINE = st.one_of(
    st.sampled_from(["BEGIN IONS", "END IONS", "", "PEPMASS=500.1", "CHARGE=2-", "Name: x", "Num Peaks: 2",
                     "PrecursorMZ: 200", "Comments: \"SMILES=C\" \"a=b\"", "Synon: $:03[M+H]+", "# c"]),
    st.builds(lambda a, b: f"{a} {b}", st.floats(allow_nan=True, allow_infinity=True), st.floats(width=32)),
    st.text(max_size=20),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINE, max_size=25), fmt=st.sampled_from(["mgf", "msp"]), crlf=st.booleans())
def test_random_line_soup(tmp_path, lines, fmt, crlf):
    path = tmp_path / f"soup.{fmt}"
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode("utf-8", "surrogatepass"))
    check_read(path, fmt)


def test_block_boundaries_do_not_change_results(tmp_path):
    """The same mutated files read with tiny blocks give the same spectra and counts."""
    from fastspec.io import mgf, msp

    rng = random.Random(7)
    for fmt, mod in (("mgf", mgf), ("msp", msp)):
        seeds = [(DATA / name).read_bytes() for name in SEEDS[fmt]]
        for case in range(25):
            data = b"\n".join(mutate(rng.choice(seeds), rng) for _ in range(4))
            path = tmp_path / f"b{case}.{fmt}"
            path.write_bytes(data)
            whole, r1 = fio.read(path, return_report=True)
            r2 = fio.ReadReport()
            parts = list(mod.iter_spectra(str(path), on_error="skip", report=r2, block_bytes=64))
            r2.check()
            assert (r1.n_records, r1.n_spectra, r1.counts_by_reason) == (r2.n_records, r2.n_spectra,
                                                                        r2.counts_by_reason)
            assert [(r.line, r.reason) for r in r1.rejected] == [(r.line, r.reason) for r in r2.rejected]
            assert r1.warnings == r2.warnings
            if parts:
                from fastspec.spectra import Spectra

                cat = Spectra.concat(parts)
                assert np.array_equal(cat.mz, whole.mz) and cat.ids == whole.ids
