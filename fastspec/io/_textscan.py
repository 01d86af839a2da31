"""Numba scanner for line-based spectrum text (MGF and MSP).

One pass over the raw bytes splits the text into records, parses every peak line straight into
float64 arrays and copies the metadata lines into one ``\\n``-joined byte buffer (decoded and split
into key/value columns by pyarrow, without a Python loop per line).

Numbers are parsed exactly like Python's ``float()``: the common case (at most 18 significant
digits and a decimal exponent within +-22) uses Clinger's fast path, which is correctly rounded
because both the integer mantissa and the power of ten are exact doubles and IEEE division /
multiplication round once. Other syntactically valid numbers (very long or with large exponents)
are handed back and converted in Python, so results are bit-identical to ``float(token)``.
"""
from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from fastspec.kernels._config import NJIT

MGF = 0
MSP = 1

#: record error codes -> reasons (also used in reports)
E_OK = 0
E_NUMBER = 1
E_SINGLE = 2
E_UNTERMINATED = 3
E_DECIMAL_COMMA = 4
E_THOUSANDS = 5
E_OUTSIDE = 6
ERROR_REASONS = {
    E_NUMBER: "unparsable peak line",
    E_SINGLE: "peak line with a single value",
    E_UNTERMINATED: "record not terminated (missing END IONS)",
    E_DECIMAL_COMMA: "peak line with decimal commas (e.g. 42,0338)",
    E_THOUSANDS: "peak line with a thousands separator (e.g. 1,000)",
    E_OUTSIDE: "record without BEGIN IONS (missing or damaged, or joined to other lines by CR-only line ends)",
}

#: keys holding a declared peak count (lower-case): checked against the peaks read, then dropped
NUM_PEAKS_KEYS = ("num peaks", "num_peaks", "numpeaks", "num peak", "npeaks")
# the same as one byte string and its offsets, for the scanner
_NP_WORDS = np.frombuffer("".join(NUM_PEAKS_KEYS).encode(), dtype=np.uint8)
_NP_OFFS = np.cumsum([0] + [len(k) for k in NUM_PEAKS_KEYS]).astype(np.int64)

_P10 = np.array([10.0**i for i in range(23)], dtype=np.float64)
_TWO53 = 2**53


@numba.njit(**NJIT)
def _is_digit(c):
    return 48 <= c <= 57


@numba.njit(**NJIT)
def _lower_eq(buf, s, e, word):
    """Case-insensitive comparison of buf[s:e] with an ASCII lower-case word (uint8 array)."""
    if e - s != word.shape[0]:
        return False
    for i in range(word.shape[0]):
        c = buf[s + i]
        if 65 <= c <= 90:
            c += 32
        if c != word[i]:
            return False
    return True


@numba.njit(**NJIT)
def parse_number(buf, s, e, p10):
    """Parse all of buf[s:e] as a float. Returns (value, status): 0 ok, 1 valid but needs Python,
    2 invalid. Accepts exactly what Python's ``float()`` accepts, minus underscores."""
    p = s
    neg = False
    c = buf[p]
    if c == 43 or c == 45:  # + -
        neg = c == 45
        p += 1
        if p >= e:
            return 0.0, 2
    c = buf[p] | 32
    if c == 110 or c == 105:  # n, i: nan / inf / infinity
        n = e - p
        if n == 3 and (buf[p + 1] | 32) == 97 and (buf[p + 2] | 32) == 110 and c == 110:
            return np.nan, 0
        if c == 105 and (n == 3 or n == 8) and (buf[p + 1] | 32) == 110 and (buf[p + 2] | 32) == 102:
            if n == 8 and not ((buf[p + 3] | 32) == 105 and (buf[p + 4] | 32) == 110 and (buf[p + 5] | 32) == 105
                               and (buf[p + 6] | 32) == 116 and (buf[p + 7] | 32) == 121):  # "inity"
                return 0.0, 2
            return (-np.inf if neg else np.inf), 0
        return 0.0, 2
    mant = 0
    nd = 0
    exp10 = 0
    digits = 0
    inexact = False
    while p < e and _is_digit(buf[p]):
        d = buf[p] - 48
        digits += 1
        if mant == 0 and d == 0:
            pass
        elif nd < 18:
            mant = mant * 10 + d
            nd += 1
        else:
            inexact = True
            exp10 += 1
        p += 1
    if p < e and buf[p] == 46:  # '.'
        p += 1
        while p < e and _is_digit(buf[p]):
            d = buf[p] - 48
            digits += 1
            if mant == 0 and d == 0:
                exp10 -= 1
            elif nd < 18:
                mant = mant * 10 + d
                nd += 1
                exp10 -= 1
            else:
                inexact = True
            p += 1
    if digits == 0:
        return 0.0, 2
    if p < e and (buf[p] | 32) == 101:  # exponent
        p += 1
        eneg = False
        if p < e and (buf[p] == 43 or buf[p] == 45):
            eneg = buf[p] == 45
            p += 1
        ed = 0
        ev = 0
        while p < e and _is_digit(buf[p]):
            if ev < 100000:
                ev = ev * 10 + (buf[p] - 48)
            ed += 1
            p += 1
        if ed == 0:
            return 0.0, 2
        exp10 += -ev if eneg else ev
    if p != e:
        return 0.0, 2
    if mant == 0:
        return (-0.0 if neg else 0.0), 0
    if inexact or mant > _TWO53:
        return 0.0, 1
    if 0 <= exp10 <= 22:
        v = mant * p10[exp10]
    elif -22 <= exp10 < 0:
        v = mant / p10[-exp10]
    elif 22 < exp10 <= 22 + 15:
        # mant * 10**(exp10-22) may still be an exact integer below 2**53
        m2 = mant
        for _ in range(exp10 - 22):
            m2 = m2 * 10
            if m2 > _TWO53:
                return 0.0, 1
        v = m2 * p10[22]
    else:
        return 0.0, 1
    return (-v if neg else v), 0


@numba.njit(**NJIT)
def _is_space(c):
    return c == 32 or c == 9 or c == 13 or c == 11 or c == 12


@numba.njit(inline="always", **NJIT)
def _closing_quote(buf, k, e):
    """Position of the quote closing the one at ``buf[k]`` (``e`` if none before it): a quoted
    annotation is text."""
    k += 1
    while k < e and buf[k] != 34:
        k += 1
    return k


@numba.njit(inline="always", **NJIT)
def _ends_token(c, golm):
    """Byte ``c`` ends a token of a peak line: whitespace, ',', '"', NIST MSP's peak delimiters "(85 100) [86 50]
    {87 20}", and in GOLM lines ("mz:int mz:int") ':'. Digits, most bytes of a token, cost one test or two
    (one comparison per delimiter made reading 4-8% slower)."""
    if c >= 48:
        if c <= 57:
            return False
        return c == 91 or c == 93 or c == 123 or c == 125 or (golm and c == 58)
    return c != 46 and (c == 32 or c == 9 or c == 44 or c == 13 or c == 34 or c == 40 or c == 41)


@numba.njit(**NJIT)
def _next_token(buf, p, e, golm):
    """Next token in buf[p:e] (quoted strings skipped). Returns (start, end), start == -1 if none."""
    while p < e:
        c = buf[p]
        if c == 34:
            p = _closing_quote(buf, p, e) + 1
            continue
        if _ends_token(c, golm):
            p += 1
            continue
        s = p
        while p < e and not _ends_token(buf[p], golm):
            p += 1
        return s, p
    return -1, e


@numba.njit(**NJIT)
def _line_kind(buf, ls, le, sep):
    """(numeric_start, is_meta) of a trimmed, non-empty line."""
    c0 = buf[ls]
    numeric = _is_digit(c0) or c0 == 46 or ((c0 == 43 or c0 == 45) and le - ls > 1
                                           and (_is_digit(buf[ls + 1]) or buf[ls + 1] == 46))
    if numeric:
        return True, False
    if sep == 58 and _eq_key_end(buf, ls, le) >= 0:
        return False, True
    for k in range(ls, le):
        if buf[k] == sep:
            return False, True
    return False, False


@numba.njit(**NJIT)
def _num_peaks_colon(buf, ls, le, np_words, np_offs):
    """Where the ':' of a ``Num Peaks: 12`` line is (-1: not such a line): MS-DIAL 5 writes one into every
    MGF record, MSP-style; its key, trimmed and lower-cased, is one of :data:`NUM_PEAKS_KEYS`."""
    c = ls
    while c < le and buf[c] != 58:
        c += 1
    if c == le:
        return -1
    ke = c
    while ke > ls and _is_space(buf[ke - 1]):
        ke -= 1
    for w in range(np_offs.shape[0] - 1):
        a, b = np_offs[w], np_offs[w + 1]
        if b - a != ke - ls:
            continue
        same = True
        for i in range(b - a):
            x = buf[ls + i]
            if 65 <= x <= 90:
                x += 32
            if x != np_words[a + i]:
                same = False
                break
        if same:
            return c
    return -1


@numba.njit(**NJIT)
def _peak_start(buf, ls, le, numeric, p10):
    """An MSP line starts like a peak line: a number (``nan`` and ``inf`` too: the peak rules reject
    them), or one in NIST's delimiters (``(85 100)``)."""
    if numeric:
        return True
    s = ls + 1 if buf[ls] == 40 or buf[ls] == 91 or buf[ls] == 123 else ls
    ts, te = _next_token(buf, s, le, False)
    if ts < 0:
        return False
    k = ts
    while k < te and buf[k] != 58 and buf[k] != 41 and buf[k] != 93 and buf[k] != 125:  # "85:100", "(85)"
        k += 1
    return parse_number(buf, ts, k, p10)[1] != 2


@numba.njit(**NJIT)
def _eq_key_end(buf, ls, le):
    """Where the '=' of an MGF-style ``KEY=value`` line ends its key (-1: not such a line): a letter, then
    letters, digits or '_' up to the '=' (GNPS writes ``CHARGE=-1``, ``SPECTRUMID=...`` lines into the
    metadata of its MSP exports; MSP's own ``Key: value`` lines have a ':' or a space first)."""
    c0 = buf[ls] | 32
    if not 97 <= c0 <= 122:
        return -1
    for k in range(ls + 1, le):
        c = buf[k]
        if c == 61:
            return k
        lc = c | 32
        if not (97 <= lc <= 122 or _is_digit(c) or c == 95):
            return -1
    return -1


@numba.njit(**NJIT)
def _decimal_commas(buf, ls, le):
    """The peak line ``buf[ls:le]`` writes numbers with a decimal comma ("42,0338 12,5"): a comma between
    two digits, no '.', and more than one field (quoted annotations aside). Read with ',' as a separator,
    such a line would give other peaks."""
    comma = False
    n_fields = 0
    k = ls
    while k < le:
        c = buf[k]
        if c == 34:
            k = _closing_quote(buf, k, le)
        elif c == 46:
            return False
        elif c == 44 and k > ls and k + 1 < le and _is_digit(buf[k - 1]) and _is_digit(buf[k + 1]):
            comma = True
        if not _is_space(c) and (k == ls or _is_space(buf[k - 1])):
            n_fields += 1
        k += 1
    return comma and n_fields >= 2


@numba.njit(**NJIT)
def _thousands(buf, ls, le):
    """The peak line ``buf[ls:le]`` has more than one field and one of them is a number with thousands
    separators ("100.0 1,000", "1,234.5 20": 1-3 digits, then groups of ',' and three digits, then an
    optional fraction). Read with ',' as a separator it would give other peaks."""
    n_fields = 0
    found = False
    k = ls
    while k < le:
        c = buf[k]
        if c == 34:
            k = _closing_quote(buf, k, le) + 1
            continue
        if _is_space(c) or c == 59:
            k += 1
            continue
        n_fields += 1
        te = k
        while te < le and not _is_space(buf[te]) and buf[te] != 59 and buf[te] != 34:
            te += 1
        t = k + 1 if buf[k] == 43 or buf[k] == 45 else k
        lead = 0
        while t < te and _is_digit(buf[t]):
            lead += 1
            t += 1
        groups = 0
        if 1 <= lead <= 3:
            while t + 3 < te and buf[t] == 44 and _is_digit(buf[t + 1]) and _is_digit(buf[t + 2]) and \
                    _is_digit(buf[t + 3]):
                groups += 1
                t += 4
            if groups > 0 and t < te and buf[t] == 46:
                t += 1
                while t < te and _is_digit(buf[t]):
                    t += 1
        if groups > 0 and t == te:
            found = True
        k = te
    return found and n_fields >= 2


@numba.njit(**NJIT)
def _key_is_name(buf, ls, le):
    """The MSP key of this line (text before ':', or before the '=' of a ``KEY=value`` line) is 'name'
    (any case)."""
    ke = _eq_key_end(buf, ls, le)
    if ke < 0:
        ke = ls
        while ke < le and buf[ke] != 58:
            ke += 1
    while ke > ls and _is_space(buf[ke - 1]):
        ke -= 1
    return (ke - ls == 4 and (buf[ls] | 32) == 110 and (buf[ls + 1] | 32) == 97
            and (buf[ls + 2] | 32) == 109 and (buf[ls + 3] | 32) == 101)


@numba.njit(**NJIT)
def _declared_peaks(kbuf, koff, vbuf, voff, m0, m1, words, offs, p10, declared):
    """The peak count declared by metadata lines ``m0..m1-1`` (lower-cased keys and values in ``kbuf`` /
    ``vbuf``; ``Num Peaks: 2``, a key of :data:`NUM_PEAKS_KEYS`; the last such line counts), else ``declared``
    (what the entry's earlier lines declared; -1 for none): 0 when the value is a number below 1. Read a
    line once per entry, so that an entry of many metadata lines and blank lines costs linear time."""
    for m in range(m0, m1):
        ks, ke, vs, ve = koff[m], koff[m + 1], voff[m], voff[m + 1]
        if ke == ks or kbuf[ks] != 110:  # every such key starts with 'n'
            continue
        for i in range(offs.shape[0] - 1):
            if _lower_eq(kbuf, ks, ke, words[offs[i]:offs[i + 1]]):
                v, st = parse_number(vbuf, vs, ve, p10)
                if st == 0:  # (an empty or unreadable value, "NA": no count)
                    declared = int(min(v, 1e9)) if v >= 1 else 0
                break
    return declared


@numba.njit(inline="always", **NJIT)
def _line_at(buf, p, n):
    """The line starting at ``buf[p]``: (its end, before the newline; its trimmed start and end)."""
    le = p
    while le < n and buf[le] != 10:
        le += 1
    ls = p
    while ls < le and _is_space(buf[ls]):
        ls += 1
    e = le
    while e > ls and _is_space(buf[e - 1]):
        e -= 1
    return le, ls, e


@numba.njit(**NJIT)
def _next_content_line(buf, p, n, sep):
    """The next line of ``buf[p:n]`` that is neither blank nor a ``#`` comment: (a peak line by its start, a
    metadata line, where the line starts, its trimmed start and end); the line starts at ``n`` when there is
    none. A line opening with a NIST delimiter and a number ("(85 100)", "[85 100]") is a peak line."""
    while p < n:
        le, ls, e = _line_at(buf, p, n)
        if ls < e and buf[ls] != 35:
            numeric, is_meta = _line_kind(buf, ls, e, sep)
            c = buf[ls]
            if not numeric and (c == 40 or c == 91 or c == 123) and ls + 1 < e:
                numeric, _ = _line_kind(buf, ls + 1, e, sep)
                is_meta = is_meta and not numeric
            return numeric, is_meta, p, ls, e
        p = le + 1
    return False, False, n, n, n


@numba.njit(**NJIT)
def _block_has_name(buf, p, n):
    """(A ``Name:`` line among the lines from ``buf[p]`` to the next blank line, whether that blank line (or
    a Name line) is in the buffer: when not, only the rest of the text can tell)."""
    while p < n:
        le, ls, e = _line_at(buf, p, n)
        if ls == e:
            return False, True
        if _key_is_name(buf, ls, e):
            return True, True
        p = le + 1
    return False, False


@numba.njit(**NJIT)
def _scan(buf, mode, line0, final, p10, slow_pos, slow_s, slow_e, np_words, np_offs, outside):
    """Split ``buf`` into records; see :func:`scan` for the outputs."""
    n = buf.shape[0]
    # ---- capacity from counting passes (branch-free, vectorised by LLVM; no growth in the hot loop)
    n_lines = 1
    for i in range(n):
        n_lines += buf[i] == 10
    cap_rec = n_lines + 1
    if mode == MGF:
        cap_pk = n_lines + 1
    else:
        # several peaks per line need separators between them
        n_seps = 0
        for i in range(n):
            c = buf[i]
            n_seps += (c == 32) | (c == 9) | (c == 44) | (c == 59) | (c == 58)
        cap_pk = n_lines + n_seps + 1
    rec_line = np.empty(cap_rec, np.int64)
    rec_pk = np.zeros(cap_rec + 1, np.int64)
    rec_meta = np.zeros(cap_rec + 1, np.int64)
    rec_err = np.zeros(cap_rec, np.int8)
    rec_err_line = np.zeros(cap_rec, np.int64)
    mz = np.empty(cap_pk, np.float64)
    it = np.empty(cap_pk, np.float64)
    cap_slow = slow_pos.shape[0]
    # metadata lines split at the first separator: keys lower-cased, both sides trimmed
    kbuf = np.empty(n + 1, np.uint8)
    vbuf = np.empty(n + 1, np.uint8)
    koff = np.zeros(n_lines + 1, np.int64)
    voff = np.zeros(n_lines + 1, np.int64)
    nk_bytes = 0
    nv_bytes = 0
    n_meta = 0
    n_rec = 0
    n_pk = 0
    n_slow = 0
    n_ignored = 0
    # MGF: a record whose BEGIN IONS line is damaged (a typo, a NUL byte, CR-only line ends joining it to the
    # next lines) leaves its lines outside records; an END IONS closing no record, or a line that only starts
    # with BEGIN IONS, shows that one was lost: it is reported as a rejected record (E_OUTSIDE) at the run's
    # first line that is no KEY=value line, once per run of lines between records or orphan END IONS lines
    # (a file whose every BEGIN IONS is misspelt counts every record); ``outside`` carries
    # that state from one buffer to the next, so that block boundaries change nothing
    ign_first = outside[0]
    lost = outside[1] != 0
    in_rec = False
    has_peaks = False
    blank_until = -1  # MSP: the blank lines before this position belong to the open entry
    has_name = False
    declared = -1  # MSP: the open entry's declared peak count (-1 none), from its metadata lines before decl_m
    decl_m = 0
    err = 0
    err_line = 0
    rec_start_byte = 0
    rec_start_line = 0
    rec_pk0 = 0
    rec_meta0 = 0
    rec_kb0 = 0
    rec_vb0 = 0
    rec_slow0 = 0
    consumed = 0
    consumed_lines = 0
    w_begin = np.array([98, 101, 103, 105, 110, 32, 105, 111, 110, 115], np.uint8)  # "begin ions"
    w_end = np.array([101, 110, 100, 32, 105, 111, 110, 115], np.uint8)  # "end ions"
    sep = 61 if mode == MGF else 58  # '=' or ':'
    pos = 0
    lineno = line0
    while pos < n:
        # ---- one line [ls, le), trimmed; the next starts at nxt
        le = pos
        while le < n and buf[le] != 10:
            le += 1
        nxt = min(le + 1, n)
        line_start = pos
        ls = pos
        while ls < le and _is_space(buf[ls]):
            ls += 1
        # a UTF-8 byte order mark starting a line: files with one, concatenated (cat a.mgf b.mgf)
        if ls + 2 < le and buf[ls] == 239 and buf[ls + 1] == 187 and buf[ls + 2] == 191:
            ls += 3
            while ls < le and _is_space(buf[ls]):
                ls += 1
        while le > ls and _is_space(buf[le - 1]):
            le -= 1
        cur_line = lineno
        lineno += 1
        pos = nxt
        end_record = False
        start_record = False
        numeric = False
        is_meta = False
        colon_at = -1
        if ls == le:
            if mode == MSP and in_rec:
                # Blank lines end an entry unless what follows them belongs to it (judged once per run of
                # blank lines, at its first): peaks while the entry has fewer than its declared count, or any
                # number when it declares none (converters write a blank line between "Num Peaks" and the
                # peaks, or inside the peak list), or, in a named entry still without peaks or a peak count,
                # metadata up to the next blank line that names no other entry (a blank line inside the
                # metadata). A buffer ending in blank lines leaves the entry open for the next one to judge.
                if pos <= blank_until:
                    continue
                numeric_next, meta_next, blank_until, nls, nle = _next_content_line(buf, pos, n, sep)
                if blank_until >= n:
                    continue
                if not (meta_next and has_peaks):  # (the common case, a next entry, reads no count)
                    declared = _declared_peaks(kbuf, koff, vbuf, voff, decl_m, n_meta, np_words, np_offs, p10,
                                               declared)
                    decl_m = n_meta
                    if meta_next:
                        # the metadata of a named entry goes on unless the next block names another entry
                        if declared < 0 and has_name:
                            named, known = _block_has_name(buf, blank_until, n)
                            if not known and not final:
                                break  # the entry stays open: the caller's next, longer buffer decides
                            if not named:
                                continue
                    elif (declared < 0 and numeric_next) or declared > n_pk - rec_pk0:
                        continue
                end_record = True
            else:
                if not in_rec:
                    consumed = pos
                    consumed_lines = lineno - line0
                continue
        else:
            c0 = buf[ls]
            if c0 == 35 or (mode == MGF and (c0 == 59 or c0 == 33 or c0 == 47)):  # comments # ; ! /
                if not in_rec:
                    consumed = pos
                    consumed_lines = lineno - line0
                continue
            numeric, is_meta = _line_kind(buf, ls, le, sep)
            if mode == MGF and in_rec and not numeric and not is_meta:
                colon_at = _num_peaks_colon(buf, ls, le, np_words, np_offs)
                is_meta = colon_at >= 0
            if mode == MGF:
                damaged = False
                run_end = False
                if (c0 | 32) == 98 and _lower_eq(buf, ls, le, w_begin):
                    if in_rec:
                        if err == 0:
                            err = E_UNTERMINATED
                            err_line = rec_start_line
                        end_record = True
                    start_record = True
                elif (c0 | 32) == 101 and _lower_eq(buf, ls, le, w_end):
                    if in_rec:
                        end_record = True
                    else:
                        damaged = ign_first >= 0  # (a stray second END IONS after a record is harmless)
                        run_end = True
                elif not in_rec:
                    if ign_first < 0 and not is_meta:
                        ign_first = cur_line
                    damaged = (c0 | 32) == 98 and le - ls > 10 and _lower_eq(buf, ls, ls + 10, w_begin)
                if not in_rec and not start_record:
                    if damaged and not lost:
                        lost = True
                        bad = ign_first if ign_first >= 0 else cur_line
                        rec_line[n_rec] = bad
                        rec_err[n_rec] = E_OUTSIDE
                        rec_err_line[n_rec] = bad
                        rec_pk[n_rec + 1] = n_pk
                        rec_meta[n_rec + 1] = n_meta
                        n_rec += 1
                    if run_end:  # the next lines outside records are another run (another lost record)
                        ign_first = -1
                        lost = False
                    n_ignored += 1
                    consumed = pos
                    consumed_lines = lineno - line0
                    continue
            else:
                if is_meta:
                    key_is_name = _key_is_name(buf, ls, le)
                    if not in_rec:
                        start_record = True
                    elif has_peaks or (key_is_name and has_name):
                        end_record = True
                        start_record = True
                elif not in_rec:
                    n_ignored += 1
                    consumed = pos
                    consumed_lines = lineno - line0
                    continue
        # ---- close the current record
        if end_record and in_rec:
            rec_line[n_rec] = rec_start_line
            rec_err[n_rec] = err
            rec_err_line[n_rec] = err_line if err != 0 else rec_start_line
            rec_pk[n_rec + 1] = n_pk
            rec_meta[n_rec + 1] = n_meta
            n_rec += 1
            in_rec = False
            if start_record:
                consumed = line_start
                consumed_lines = cur_line - line0
            else:
                consumed = pos
                consumed_lines = lineno - line0
        if start_record:
            in_rec = True
            ign_first = -1
            lost = False
            has_peaks = False
            has_name = False
            declared = -1
            decl_m = n_meta
            err = 0
            err_line = 0
            rec_start_byte = line_start
            rec_start_line = cur_line
            rec_pk0 = n_pk
            rec_meta0 = n_meta
            rec_kb0 = nk_bytes
            rec_vb0 = nv_bytes
            rec_slow0 = n_slow
            if mode == MGF:
                continue  # the BEGIN IONS line itself carries nothing
        if not in_rec or ls == le:
            continue
        # ---- a line inside a record: metadata
        if is_meta:
            if mode == MSP and _key_is_name(buf, ls, le):
                has_name = True
            ke = _eq_key_end(buf, ls, le) if mode == MSP else -1
            eq_line = ke >= 0
            if ke < 0 and colon_at >= 0:
                ke = colon_at
            elif ke < 0:
                ke = ls
                while buf[ke] != sep:
                    ke += 1
            vs = ke + 1
            if eq_line and ke - ls == 5 and (buf[ls] | 32) == 105 and (buf[ls + 1] | 32) == 110 and \
                    (buf[ls + 2] | 32) == 99 and (buf[ls + 3] | 32) == 104 and (buf[ls + 4] | 32) == 105 and \
                    vs < le and buf[vs] == 49:
                vs = ls  # a bare "InChI=1S/..." line: the InChI is the whole line, prefix included
            while ke > ls and _is_space(buf[ke - 1]):
                ke -= 1
            while vs < le and _is_space(buf[vs]):
                vs += 1
            for k in range(ls, ke):
                c = buf[k]
                kbuf[nk_bytes] = c + 32 if 65 <= c <= 90 else c
                nk_bytes += 1
            for k in range(vs, le):
                vbuf[nv_bytes] = buf[k]
                nv_bytes += 1
            n_meta += 1
            koff[n_meta] = nk_bytes
            voff[n_meta] = nv_bytes
            continue
        if mode == MSP:
            if not has_peaks and not _peak_start(buf, ls, le, numeric, p10):
                # a line of text among an entry's metadata (neither "Key: value" nor a peak): the entry is
                # unparsable, and the metadata after it stays in it (it started a new entry, whose peaks
                # were kept without the name, precursor and ids above the line)
                if err == 0:
                    err = E_NUMBER
                    err_line = cur_line
                continue
            if err != 0:
                # peaks of an entry already unparsable still end its metadata, as read ones would
                has_peaks = has_peaks or _peak_start(buf, ls, le, numeric, p10)
                continue
        if err != 0:
            continue
        # ---- peaks
        has_peaks = True
        golm = False
        colon_pair = False  # "85: 100": a ':' closing the first token separates m/z and intensity
        has_semi = False
        multi = False
        if mode == MSP:
            comma_digit = False
            # a GOLM line ("mz:int mz:int") has its ':' in the first token; a colon further on, or a semicolon
            # after a third token of text, belongs to an unquoted annotation ("478.3292<TAB>50<TAB>[M+H]+ -C18:1
            # FA; -H2O", MS-DIAL); a ';' separates pairs ("85 100; 86 50;") before a third
            # token, and also after a token that is a number or a quoted annotation ("85 100 5; 86 50 3",
            # '85 100 "p-H2O"; 101 30': its closing quote ends the annotation)
            tok = 0  # 0 before the first token, 1 inside it, 2 after it, 3 inside the second, ...
            quoted = False  # the last token is a quoted annotation
            t0 = ls  # where the last token started; it ends at t1
            t1 = ls
            k = ls
            while k < le:
                c = buf[k]
                if c == 34:  # a quoted annotation: one token of text (a quote inside a token ends that token)
                    if tok & 1 == 0:
                        quoted = True
                    k = _closing_quote(buf, k, le) + 1
                    t1 = k
                    tok += 2 - (tok & 1)
                    continue
                if c == 32 or c == 9 or c == 59:
                    # (a ';' after a third token is rare: parsing that token costs nothing on other lines)
                    if c == 59 and (tok <= 4 or quoted or parse_number(buf, t0, t1, p10)[1] != 2):
                        has_semi = True
                    tok += tok & 1
                else:
                    if tok & 1 == 0:  # a token starts
                        t0 = k
                        quoted = False
                    t1 = k + 1
                    if c == 58:
                        if tok < 2:
                            if k + 1 < le and not _is_space(buf[k + 1]):
                                golm = True
                            else:
                                colon_pair = True
                    elif c == 44 and k + 1 < le and _is_digit(buf[k + 1]):
                        comma_digit = True
                    tok += 1 - (tok & 1)
                k += 1
            if comma_digit and _decimal_commas(buf, ls, le):
                err = E_DECIMAL_COMMA
                err_line = cur_line
                continue
            if comma_digit and _thousands(buf, ls, le):
                err = E_THOUSANDS
                err_line = cur_line
                continue
        if mode == MSP and not has_semi and not golm and not colon_pair:
            # an all-numeric line with an even count >= 4 holds several pairs; else first two values
            cnt = 0
            all_num = True
            p = ls
            while True:
                ts, te = _next_token(buf, p, le, False)
                if ts < 0:
                    break
                v, st = parse_number(buf, ts, te, p10)
                if st == 2:
                    all_num = False
                    break
                cnt += 1
                p = te
            multi = all_num and cnt >= 4 and cnt % 2 == 0
        # groups: MSP lines split at ';' (GOLM lines also at whitespace); an MGF line is one group
        grouped = mode == MSP and (has_semi or golm)
        gs = ls
        while gs < le:
            ge = le
            if grouped:
                if golm:
                    while gs < le and (_is_space(buf[gs]) or buf[gs] == 59):
                        gs += 1
                ge = gs
                while ge < le and buf[ge] != 59 and not (golm and _is_space(buf[ge])):
                    if buf[ge] == 34:
                        ge = _closing_quote(buf, ge, le)
                    ge += 1
                ge = min(ge, le)
            p = gs
            while True:
                t1s, t1e = _next_token(buf, p, ge, golm or colon_pair)
                if t1s < 0:
                    break
                v1, s1 = parse_number(buf, t1s, t1e, p10)
                if s1 == 2:
                    err = E_NUMBER
                    err_line = cur_line
                    break
                if mode == MGF and t1e + 1 < ge and buf[t1e] == 44 and _is_digit(buf[t1e + 1]):
                    e = E_DECIMAL_COMMA if _decimal_commas(buf, ls, le) else E_THOUSANDS if \
                        _thousands(buf, ls, le) else E_OK
                    if e != E_OK:
                        err = e
                        err_line = cur_line
                        break
                t2s, t2e = _next_token(buf, t1e, ge, golm or colon_pair)
                if t2s < 0:
                    err = E_SINGLE
                    err_line = cur_line
                    break
                v2, s2 = parse_number(buf, t2s, t2e, p10)
                if s2 == 2:
                    err = E_NUMBER
                    err_line = cur_line
                    break
                if mode == MGF and t2e + 1 < ge and buf[t2e] == 44 and _is_digit(buf[t2e + 1]) and \
                        _thousands(buf, ls, le):
                    err = E_THOUSANDS
                    err_line = cur_line
                    break
                mz[n_pk] = v1
                it[n_pk] = v2
                if s1 == 1:
                    if n_slow < cap_slow:
                        slow_pos[n_slow] = 2 * n_pk
                        slow_s[n_slow] = t1s
                        slow_e[n_slow] = t1e
                    n_slow += 1
                if s2 == 1:
                    if n_slow < cap_slow:
                        slow_pos[n_slow] = 2 * n_pk + 1
                        slow_s[n_slow] = t2s
                        slow_e[n_slow] = t2e
                    n_slow += 1
                n_pk += 1
                if not multi:
                    break
                p = t2e
            if err != 0:
                break
            gs = ge + 1
    # ---- end of buffer
    if in_rec:
        if final:
            if mode == MGF and err == 0:
                err = E_UNTERMINATED
                err_line = rec_start_line
            rec_line[n_rec] = rec_start_line
            rec_err[n_rec] = err
            rec_err_line[n_rec] = err_line if err != 0 else rec_start_line
            rec_pk[n_rec + 1] = n_pk
            rec_meta[n_rec + 1] = n_meta
            n_rec += 1
            consumed = n
            consumed_lines = lineno - line0
        else:
            # an open record: leave it to the caller's next buffer
            n_pk = rec_pk0
            n_meta = rec_meta0
            nk_bytes = rec_kb0
            nv_bytes = rec_vb0
            n_slow = rec_slow0
            consumed = rec_start_byte
            consumed_lines = rec_start_line - line0
    else:
        consumed = n
        consumed_lines = lineno - line0
    outside[0] = ign_first
    outside[1] = 1 if lost else 0
    return (rec_line[:n_rec], rec_pk[: n_rec + 1], rec_meta[: n_rec + 1], rec_err[:n_rec], rec_err_line[:n_rec],
            mz[:n_pk], it[:n_pk], n_slow, kbuf[:nk_bytes], koff[: n_meta + 1], vbuf[:nv_bytes], voff[: n_meta + 1],
            consumed, consumed_lines, n_ignored)


class ScanResult:
    """Records found in one text buffer (arrays are views, valid until the next scan)."""

    __slots__ = ("rec_line", "rec_pk", "rec_meta", "rec_err", "rec_err_line", "mz", "intensity",
                 "keys", "values", "consumed", "consumed_lines", "n_ignored")

    def __len__(self) -> int:
        return self.rec_line.shape[0]


def scan(data: bytes, mode: int, line0: int = 1, final: bool = True, outside: np.ndarray | None = None) -> ScanResult:
    """Scan MGF (``mode=MGF``) or MSP (``mode=MSP``) text.

    Parameters
    ----------
    data : bytes
        Whole lines of text (the caller cuts buffers after a newline).
    mode : int
        :data:`MGF` or :data:`MSP`.
    line0 : int
        1-based line number of the first line of ``data``.
    final : bool
        ``data`` ends the file. Otherwise an open record at the end is left unconsumed.
    outside : ndarray of int64, shape (2,), optional
        MGF: the state of the lines outside records at the end of the previous buffer of the same file
        (updated in place; a new file starts from ``[-1, 0]``), see ``E_OUTSIDE``.

    Returns
    -------
    ScanResult
        ``rec_line`` (record start lines), ``rec_pk`` / ``rec_meta`` (CSR offsets of peaks and
        metadata lines per record), ``rec_err`` / ``rec_err_line`` (error code, line),
        ``mz`` / ``intensity`` float64 peaks, ``keys`` / ``values`` (pyarrow string arrays, one
        entry per metadata line: lower-cased key and value, both trimmed),
        ``consumed`` (bytes) and ``consumed_lines`` fully processed, ``n_ignored`` lines outside
        records.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(0, np.uint8)
    cap = 256
    state = np.array([-1, 0], np.int64) if outside is None else outside
    while True:
        st = state.copy()  # (a rescan starts from the same state)
        slow_pos = np.empty(cap, np.int64)
        slow_s = np.empty(cap, np.int64)
        slow_e = np.empty(cap, np.int64)
        (rec_line, rec_pk, rec_meta, rec_err, rec_err_line, mz, it, n_slow, kbuf, koff, vbuf, voff, consumed,
         consumed_lines, n_ignored) = _scan(buf, mode, line0, final, _P10, slow_pos, slow_s, slow_e, _NP_WORDS,
                                            _NP_OFFS, st)
        if n_slow <= cap:
            state[:] = st
            break
        cap = int(n_slow)  # rare: many numbers Python must convert; rescan with room for all
    slow_pos, slow_s, slow_e = slow_pos[:n_slow], slow_s[:n_slow], slow_e[:n_slow]
    if n_slow:
        mz = mz.copy()
        it = it.copy()
        for p, s, e in zip(slow_pos.tolist(), slow_s.tolist(), slow_e.tolist()):
            v = float(data[s:e])
            if p % 2:
                it[p // 2] = v
            else:
                mz[p // 2] = v
    r = ScanResult()
    r.rec_line = rec_line
    r.rec_pk = rec_pk
    r.rec_meta = rec_meta
    r.rec_err = rec_err
    r.rec_err_line = rec_err_line
    r.mz = mz
    r.intensity = it
    r.keys = _strings(kbuf, koff)
    r.values = _strings(vbuf, voff)
    r.consumed = int(consumed)
    r.consumed_lines = int(consumed_lines)
    r.n_ignored = int(n_ignored)
    return r


def count_peaks(data: bytes, mode: int) -> int:
    """The number of peaks :func:`scan` reads from ``data`` (whole lines, ending the file), counted only:
    no number is converted in Python and no metadata string made (a rejected record's lines are located
    by scanning parts of it)."""
    buf = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(0, np.uint8)
    none = np.empty(0, np.int64)  # no room for the numbers Python converts: they are counted all the same
    return int(_scan(buf, mode, 1, True, _P10, none, none, none, _NP_WORDS, _NP_OFFS,
                    np.array([-1, 0], np.int64))[5].shape[0])


def _decode(raw: bytes) -> str:
    """UTF-8, else Windows-1252 (vendor and NIST exports), else Latin-1: never fails, loses no byte."""
    for enc in ("utf-8", "cp1252"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            pass
    return raw.decode("latin-1")


def _strings(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A pyarrow string array over (bytes, int64 offsets); values that are not UTF-8 are read as
    Windows-1252 (or Latin-1), so a "caf\xe9ine" written by Windows software reads as "caféine"."""
    arr = pa.LargeStringArray.from_buffers(offsets.shape[0] - 1, pa.py_buffer(offsets), pa.py_buffer(data))
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        raw = data.tobytes()
        offs = offsets.tolist()
        arr = pa.array([_decode(raw[a:b]) for a, b in zip(offs[:-1], offs[1:])], pa.large_string())
    return arr.cast(pa.string()) if offsets[-1] < 2**31 - 1 else arr
