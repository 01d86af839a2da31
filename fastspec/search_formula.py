"""Formula search: exact top-k over the library spectra with the query's canonical formula.

The query's formula comes from its metadata (else from its SMILES, as the library's do) or from the
caller (``formula=``). Queries without a same-formula neighbour are skipped (status ``no_neighbour``, or
``no_formula`` for a query without a formula), searched against the whole
library (``no_neighbour="fallback"``, flagged in ``Hits.fallback``) or left empty.
"""
from __future__ import annotations

import numpy as np

from fastspec.errors import ParameterError
from fastspec.hits import NO_FORMULA, NO_NEIGHBOUR_SKIPPED
from fastspec.search import (_batches, _Context, _formula_texts, _ranges_csr, caller_formulas,
                             run_whole_library)
from fastspec.spectra import Spectra


def query_formula_codes(ctx: _Context, formula, raw: Spectra) -> tuple[np.ndarray, list]:
    """Each query's formula code in the library (-1 no formula, -2 one no library spectrum has), int64 (n,),
    and its canonical Hill formula (None where it has none): the caller's, else its own."""
    from fastspec.library import formulas_or_from_structure

    nq = len(ctx.q)
    if formula is None:
        vals = raw.column("formula")
    elif isinstance(formula, str):
        vals = [formula] * nq
    else:
        vals = list(formula)
        if len(vals) != nq:
            raise ParameterError(f"formula: {len(vals)} values for {nq} queries")
    if formula is None:  # the queries' own, else from their SMILES or InChI, as the library's are
        canon, _, _ = formulas_or_from_structure(_formula_texts(vals), raw.column("smiles"), raw.column("inchi"))
    else:
        canon = caller_formulas(vals)
    lut = ctx.lib.code_lookup("formula")
    return np.array([lut.get(c, -2) if c is not None else -1 for c in canon], dtype=np.int64), list(canon)


def run_formula(ctx: _Context, rows, fcodes, scores, indices, matches, status, fallback):
    lib = ctx.lib
    foff = np.asarray(lib.array("formula_offsets"))
    fids = lib.array("formula_ids")
    for batch in _batches(rows, 4096):
        code = fcodes[batch]
        known = code >= 0  # -1 no formula, -2 a formula no library spectrum has
        safe = np.where(known, code, 0)  # a library without formulas has foff == [0]
        lo = np.where(known, foff[np.minimum(safe, foff.shape[0] - 1)], 0)
        hi = np.where(known, foff[np.minimum(safe + 1, foff.shape[0] - 1)], 0)
        offs, pos = _ranges_csr(lo, hi)
        ids = np.asarray(fids[pos], dtype=np.int64)
        offs, ids = ctx.filter_csr(batch, offs, ids)
        s, i, m = ctx.exact(batch, offs, ids)
        scores[batch], indices[batch], matches[batch] = s, i, m
        empty = np.diff(offs) == 0
        if empty.any():
            miss = batch[empty]
            if ctx.cfg.no_neighbour == "skip":
                # a query without a formula is told apart from one whose formula no library spectrum has
                status[miss] = np.where(code[empty] == -1, NO_FORMULA, NO_NEIGHBOUR_SKIPPED)
            elif ctx.cfg.no_neighbour == "fallback":
                fallback[miss] = True
                ctx.nested += 1
                try:
                    run_whole_library(ctx, miss, scores, indices, matches)
                finally:
                    ctx.nested -= 1
        ctx.advance(batch.shape[0])
