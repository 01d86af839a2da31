"""Render evaluation / ablation JSONs as markdown (PNG figures alongside) and self-contained HTML.

The document is built once as a list of blocks (headings, paragraphs, tables, figures) and written in
both formats; figures are PNGs from matplotlib (imported lazily, Agg backend), saved next to the
markdown and base64-embedded in the HTML.
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fastspec._atomic import write_text_atomically
from fastspec.errors import FastspecError

REFERENCE = (1.0, 0.0, False)  # intensity_power, mz_power, shuffle of the "default" ablation row


def _reference(d: dict) -> tuple:
    """An ablation's reference row: its ``reference_power`` at mz_power 0, unshuffled (a grid without
    intensity_power 1 dropped the summary and split profiles when this was fixed at 1)."""
    power = (d.get("config") or {}).get("reference_power")
    return REFERENCE if power is None else (float(power), 0.0, False)


@dataclass
class Block:
    kind: str  # "h", "p", "table", "figure"
    text: str = ""
    level: int = 2
    header: Sequence[str] = ()
    rows: Sequence[Sequence[Any]] = ()
    png: bytes = b""
    name: str = ""


# ====================================================================== loading
def load_inputs(inputs: Sequence) -> list[dict]:
    """Read report / ablation JSONs (paths or already-loaded dicts)."""
    docs = []
    for x in inputs:
        if isinstance(x, dict):
            docs.append(x)
            continue
        p = Path(x)
        if not p.exists():
            raise FileNotFoundError(2, "No such file or directory", str(p))
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise FastspecError(f"{p}: not valid JSON ({e})") from e
        except UnicodeDecodeError:
            raise FastspecError(f"{p}: not a JSON text file (not UTF-8 text; a report JSON is)") from None
        if not isinstance(d, dict) or not ("rows" in d or "n_test" in d):
            raise FastspecError(f"{p}: neither an evaluation report nor an ablation JSON")
        for r in d["rows"] if "rows" in d else [d]:
            missing = [k for k in _REQUIRED if k not in r] if isinstance(r, dict) else list(_REQUIRED)
            if missing:
                raise FastspecError(f"{p}: a report without {', '.join(missing)} (not written by fastspec "
                                    "evaluate / ablate, or edited)")
        docs.append(d)
    return docs


#: Keys every report (and every ablation row) has, which the tables read.
_REQUIRED = ("n_test", "n_scored", "coverage", "mean_tanimoto", "mean_tanimoto_all", "exact_match_rate",
             "exact_match_rate_all")


def _evaluations(docs: list[dict]) -> list[tuple[str, dict]]:
    """(label, report) for every plain report, and the reference row of every ablation split."""
    runs = []
    for d in docs:
        if "rows" in d:
            ref = _reference(d)
            for r in d["rows"]:
                if (r.get("intensity_power"), r.get("mz_power"), r.get("shuffle")) == ref and not r.get("embedding"):
                    runs.append((str(r.get("split")), r.get("config") or {}, r))
        else:
            c = d.get("config", {})
            runs.append((str(c.get("split", "?")), c, d))
    return [(_split_label(split, c, runs), r) for split, c, r in runs]


#: choices that change a split, shown beside its name where runs of one split spec differ in them
_SPLIT_CHOICES = ("library", "queries", "seed", "test_fraction", "molecule_disjoint", "ion_mode")


def _split_label(split: str, c: dict, runs: list) -> str:
    """The split's name, and the choices (library and query files by name, seed, test share,
    molecule-disjointness, ion mode) in which the runs of the same split name differ, so that each gets its
    own label and split profile."""
    same = [rc for name, rc, _ in runs if name == split]
    s = split
    for key in _SPLIT_CHOICES:
        if len({repr(rc.get(key)) for rc in same}) > 1:
            v = c.get(key)
            if key in ("library", "queries") and isinstance(v, str):
                v = Path(v).name
            s += f" {key}" if v is True else f" {key}={v}"
    return s


# ====================================================================== formatting
def _f(x, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _ci(rep: dict, key: str) -> str:
    ci = (rep.get("ci") or {}).get(key)
    if not ci or ci[0] is None:
        return "–"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _tolerance_label(text) -> str:
    """One spelling per tolerance ("0.01", "0.010" and 0.01 all read 0.01da), no space in it."""
    from fastspec.tolerance import parse_tolerance

    try:
        return str(parse_tolerance(text)).replace(" ", "")
    except Exception:  # noqa: BLE001 - a report written by another version: shown as it is
        return str(text).replace(" ", "")


def _setting(rep: dict) -> str:
    """What tells two runs apart: preset or metric (+ powers), and every choice that changes what a
    metric means when it differs from the default (the no-neighbour policy above all: skip, zero and
    fallback means are over different test spectra)."""
    c = rep.get("config", {})
    s = c.get("preset") or c.get("metric", "?")
    if not c.get("preset") or (c.get("intensity_power"), c.get("mz_power")) != (1.0, 0.0):
        s += f" ip={_f(c.get('intensity_power'), 2)} mz={_f(c.get('mz_power'), 2)}"
    if not c.get("preset") and c.get("tolerance") not in (None, "None"):  # (two tolerances read alike: an audit)
        s += f" tol={_tolerance_label(c['tolerance'])}"
    bin_width = (c.get("metric_params") or {}).get("bin_width")
    if bin_width is not None:  # the preset's bins at another width (an explicit tolerance)
        s += f" bin_width={bin_width:g}"
    if c.get("shuffle_intensities"):
        s += " shuffled"
    s += f" no_neighbour={c.get('no_neighbour', 'skip')}"  # always: skip's means are over covered spectra only
    for key, default in (("bucket", "formula"), ("vote", 1)):
        if c.get(key, default) != default:
            s += f" {key}={c[key]}"
    fp = rep.get("fingerprint") or c.get("fingerprint")
    if fp and fp != "morgan:2:4096":
        s += f" fp={fp}"
    elif "fingerprint" in c and c["fingerprint"] is None:  # exact matches only: its Tanimoto is 0 or 1
        s += " fp=none"
    return s


# ====================================================================== blocks
def build_blocks(
    docs: list[dict], title: str = "Nearest-neighbour baseline evaluation", figures: bool = True, notes: Sequence[str] = ()
) -> list[Block]:
    """The document: summary, split profiles, ablation, analyses, groups, histograms, confusions."""
    blocks = [Block("h", title, level=1)] + [Block("p", n) for n in notes]
    evals = _evaluations(docs)
    if evals:
        blocks += _summary(evals)
        blocks += _profiles(evals)
    abl = [d for d in docs if "rows" in d]
    for d in abl:
        blocks += _ablation(d, figures)
    if evals and figures:
        png = _plot_histograms(evals)
        if png:
            blocks += [Block("h", "Top-1 score: same vs different molecule", 2),
                       Block("p", "Similarity of each test spectrum to its top-1 training neighbour, split by whether the neighbour is the same molecule (InChIKey first block); each class normalised to its own count."),
                       Block("figure", "Top-1 score histograms", png=png, name="score_hist")]
    if evals:
        blocks += _groups(evals[0])
    if evals and figures:
        blocks += _confusions(evals)
    return blocks


def _excluded(r: dict) -> str:
    """Spectra not in the evaluation: set aside by the split / test / training spectra without a usable
    molecule ("-" where a report predates the counts), and records the reader rejected when any were
    ("+ N unreadable")."""
    prof = r.get("split_profile") or {}
    exc = r.get("excluded") or {}
    if not prof and not exc:
        return "-"
    test = sum(int(v) for k, v in exc.items() if k.startswith("test_"))
    # training spectra with an unparsable structure stay in training (a copy of one scores Tanimoto 0)
    train = sum(int(v) for k, v in exc.items() if k.startswith("train_") and k != "train_invalid_structure")
    unread = sum(int(v) for k, v in exc.items() if k.endswith("_records_rejected"))
    return f"{_f(prof.get('n_excluded', 0))} / {_f(test)} / {_f(train)}" + (f" + {_f(unread)} unreadable" if unread else "")


def _summary(evals) -> list[Block]:
    header = ["split", "setting", "n_test", "excluded (split / test / train)", "n_scored", "coverage", "mean_tanimoto",
              "mean_tanimoto_all", "95% CI (all)", "exact", "exact_all", "hit@1 all", "oracle", "leakage"]
    rows = []
    for label, r in evals:
        rows.append([label, _setting(r), _f(r["n_test"]), _excluded(r), _f(r["n_scored"]), _f(r["coverage"]),
                     _f(r["mean_tanimoto"]), _f(r["mean_tanimoto_all"]), _ci(r, "mean_tanimoto_all"),
                     _f(r["exact_match_rate"]), _f(r["exact_match_rate_all"]), _f((r.get("hit_at_k_all") or {}).get("1")),
                     _f(r.get("oracle_tanimoto")), _f(r.get("leakage"))])
    return [
        Block("h", "Summary", 2),
        Block("p", "`mean_tanimoto` averages over the test spectra that received a prediction (`n_scored`, those with a "
                   "same-bucket training neighbour under the skip policy); `mean_tanimoto_all` divides by all test spectra "
                   "(unscored = 0). `coverage`: share of test spectra with a same-bucket training spectrum. `oracle`: best "
                   "Tanimoto reachable by copying any training molecule of the bucket (covered spectra; under the "
                   "fallback policy, of the polarity for the others). `leakage`: share of "
                   "test molecules also present in training. CIs: 95% bootstrap over test molecules. `excluded`: spectra "
                   "the split set aside (no molecule key, for the molecule-grouped splits), then test spectra left out "
                   "for no molecule or an unparsable structure and training spectra left out for no molecule; none of "
                   "them is in `n_test` (training spectra with an unparsable structure stay: a copy of one scores 0)."),
        Block("table", header=header, rows=rows),
    ] + _labels_note(evals)


def _labels_note(evals) -> list[Block]:
    """One line per distinct label reading (library, external queries): what was derived rather than read."""
    lines = []
    for label, r in evals:
        for side, c in (r.get("labels") or {}).items():
            text = (f"{side}: {_f(c.get('n_spectra'))} spectra read, {_f(c.get('n_no_molecule'))} without a molecule "
                    f"key ({_f(c.get('n_molecule_from_smiles'))} keyed from their SMILES), "
                    f"{_f(c.get('n_smiles_from_inchi', 0))} structures given only as an InChI, {_f(c.get('n_no_formula'))} "
                    f"without a formula ({_f(c.get('n_formula_from_smiles'))} formulas derived from the SMILES, "
                    f"{_f(c.get('n_formula_from_inchi'))} from the InChI), {_f(c.get('n_ce_normalized'))} normalized "
                    f"(NCE %) collision energies")
            if c.get("n_zero_intensity_dropped"):  # (reports written before 2026-12-07 lack the count)
                text += f", {_f(c['n_zero_intensity_dropped'])} zero-intensity peaks dropped"
            if text not in lines:
                lines.append(text)
    if not lines:
        return []
    return [Block("p", "Labels, before the ion-mode filter: " + "; ".join(lines) + ".")]


def _profiles(evals) -> list[Block]:
    header = ["split", "n_train", "n_test", "test_share", "molecule_overlap", "unseen_formula", "TVD instrument", "TVD adduct",
              "TVD CE", "most over-represented in test"]
    rows, seen = [], set()
    for label, r in evals:
        p = r.get("split_profile") or {}
        if label in seen or not p:
            continue
        seen.add(label)
        sh = p.get("shift", {})
        over = (sh.get("instrument_type", {}).get("over_represented") or [{}])[0]
        over_s = f"{over.get('value')} ({over.get('test_share', 0):.2f} vs {over.get('train_share', 0):.2f})" if over else "–"
        rows.append([label, _f(p.get("n_train")), _f(p.get("n_test")), _f(p.get("test_share")), _f(p.get("molecule_overlap")),
                     _f(p.get("unseen_formula_share")), _f(sh.get("instrument_type", {}).get("tvd")),
                     _f(sh.get("adduct", {}).get("tvd")), _f(sh.get("ce_bin", {}).get("tvd")), over_s])
    out = [Block("h", "Split profiles", 2),
           Block("p", "`molecule_overlap`: share of test molecules also in training; `unseen_formula`: share of test spectra "
                      "whose formula (and polarity) has no training spectrum; TVD: total-variation distance between the train "
                      "and test distributions of instrument type, adduct and collision-energy bin (normalized "
                      "energies, NCE %, binned apart from absolute ones)."),
           Block("table", header=header, rows=rows)]
    for label, r in evals:
        info = (r.get("split_profile") or {}).get("split_info") or {}
        hist = info.get("history")
        if hist:
            pol = info.get("policy", "skip")
            out += [Block("h", f"Learning-to-split iterations ({label})", 3),
                    Block("p", f"Each iteration evaluates the NN predictor (top-1, no-neighbour policy `{pol}`) on the "
                               "current test side, fits the logistic-regression splitter to the hardness (1 - Tanimoto) "
                               "and moves the molecules it scores hardest to test; the hardest split seen is kept."),
                    Block("table", header=["iteration", "test_share", "coverage", f"predictor mean Tanimoto ({pol})"],
                          rows=[[h["iteration"], _f(h["test_share"]), _f(h["coverage"]), _f(h["mean_tanimoto_all"])] for h in hist])]
            break
    return out


def _ablation(d: dict, figures: bool) -> list[Block]:
    rows = [r for r in d["rows"] if not r.get("embedding")]
    splits = list(dict.fromkeys(r["split"] for r in rows))
    settings = list(dict.fromkeys((r["intensity_power"], r["mz_power"], r["shuffle"]) for r in rows))
    cell = {(r["split"], r["intensity_power"], r["mz_power"], r["shuffle"]): r for r in rows}
    header = ["intensity_power", "mz_power", "shuffle"] + [f"{s}: scored / all" for s in splits]
    # n and coverage depend on the split and buckets, not on the peak weights: one line each on top
    first = {s: next(r for r in rows if r["split"] == s) for s in splits}
    trs = [
        ["n_test", "", ""] + [_f(first[s]["n_test"]) for s in splits],
        ["n_scored", "", ""] + [_f(first[s]["n_scored"]) for s in splits],
        ["coverage", "", ""] + [_f(first[s]["coverage"]) for s in splits],
    ]
    for ip, mp, sh in settings:
        line = [_f(ip, 2), _f(mp, 2), "yes" if sh else ""]
        for s in splits:
            r = cell.get((s, ip, mp, sh))
            line.append(f"{_f(r['mean_tanimoto'])} / {_f(r['mean_tanimoto_all'])}" if r else "–")
        trs.append(line)
    c = d.get("config") or {}
    base = c.get("preset") or (f"{c['metric']}, tolerance {c.get('tolerance')}" if c.get("metric") else "")
    if c.get("no_neighbour"):  # two ablations under different policies are different experiments
        base += f"{', ' if base else ''}no_neighbour={c['no_neighbour']}"
    out = [
        Block("h", "Intensity ablation" + (f" ({base})" if base else ""), 2),
        Block("p", "Mean Tanimoto of the NN prediction (over scored / over all test spectra) for peak weights "
                   "`mz**mz_power * intensity**intensity_power`; intensity_power 0 = every peak weighs 1 (binary peaks; in binned cosine a bin then holds its number of peaks); the shuffle row permutes "
                   "intensities within each spectrum."),
        Block("table", header=header, rows=trs),
    ]
    if figures:
        png = _plot_ablation(rows, splits)
        if png:
            out.append(Block("figure", "Ablation curves", png=png, name="ablation"))
    blind = d.get("intensity_blind") or []
    if blind:
        out += [
            Block("h", "Intensity-blind confusions", 3),
            Block("p", "Per test spectrum, top-1 under unweighted peaks (intensity_power 0) vs intensity-aware peaks "
                       f"(intensity_power {_reference(d)[0]:g}): how many wrong binary predictions intensity fixes, how many right ones it "
                       "breaks, and (shares of compared spectra) how often the intensity-aware top-1 has a higher or "
                       "lower Tanimoto than the binary one."),
            Block("table", header=["split", "compared", "binary wrong", "fixed", "fixed share", "binary right", "broken",
                                   "broken share", "top-1 changed", "Tanimoto up", "Tanimoto down", "mean Tanimoto gain"],
                  rows=[[b["split"], _f(b["n_compared"]), _f(b["binary_wrong"]), _f(b["fixed_by_intensity"]), _f(b["fixed_share"]),
                         _f(b["binary_right"]), _f(b["broken_by_intensity"]), _f(b["broken_share"]), _f(b["changed_share"]),
                         _f(b.get("tanimoto_improved_share")), _f(b.get("tanimoto_worsened_share")),
                         _f(b["mean_tanimoto_gain"])] for b in blind]),
        ]
    emb = d.get("embeddings") or []
    if emb:
        out += [Block("h", "External embeddings", 3),
                Block("table", header=["split", "n_test", "mean_tanimoto", "mean_tanimoto_all", "exact", "flagged pairs"],
                      rows=[[e["split"], _f(e["n_test"]), _f(e["mean_tanimoto"]), _f(e["mean_tanimoto_all"]),
                             _f(e["exact_match_rate"]), _f(e["n_flagged"])] for e in emb])]
        pairs = [(e["split"], p) for e in emb for p in e.get("pairs", [])[:5]]
        if pairs:
            out.append(Block("table", header=["split", "query", "neighbour", "embedding sim", "spectral sim", "Tanimoto"],
                             rows=[[s, p["query_molecule"], p["library_molecule"], _f(p["embedding_similarity"]),
                                    _f(p["spectral_similarity"]), _f(p["tanimoto"])] for s, p in pairs]))
    return out


def _groups(first: tuple[str, dict]) -> list[Block]:
    label, r = first
    out = [Block("h", f"By condition ({label} split)", 2)]
    for field, groups in (r.get("groups") or {}).items():
        rows = [[v, _f(g["n_test"]), _f(g["coverage"]), _f(g["mean_tanimoto"]), _f(g["mean_tanimoto_all"]), _f(g["exact_match_rate"])]
                for v, g in list(groups.items())[:8]]
        out.append(Block("h", field, 3))
        rest = int(r.get("n_test") or 0) - sum(int(g["n_test"]) for g in list(groups.values())[:len(rows)])
        if rest > 0:  # say what the table leaves out (the JSON report keeps the 20 most frequent values)
            top = "The most frequent value" if len(rows) == 1 else f"The {len(rows)} most frequent values"
            out.append(Block("p", f"{top}; the others hold {rest:,} test {'spectrum' if rest == 1 else 'spectra'} "
                                  "(the JSON report lists up to 20 values)."))
        out.append(Block("table", header=[field, "n_test", "coverage", "mean_tanimoto", "mean_tanimoto_all", "exact"],
                         rows=rows))
    return out


def _confusions(evals) -> list[Block]:
    ex, seen = [], set()
    for label, r in evals:
        taken = 0
        for e in r.get("examples") or []:
            key = (e.get("query_index"), e.get("library_index"))
            if taken == 2 or key in seen or not e.get("query_peaks"):
                continue  # the same confusion often recurs across splits: show it once
            seen.add(key)
            ex.append((label, e))
            taken += 1
    ex = ex[:4]
    if not ex:
        return []
    png = _plot_mirrors(ex)
    if not png:
        return []
    rows = [[lab, e.get("formula"), e.get("query_molecule"), e.get("library_molecule"), _f(e.get("score")), _f(e.get("tanimoto"))] for lab, e in ex]
    return [
        Block("h", "Worst confusions", 2),
        Block("p", "Wrong top-1 predictions with the highest spectral similarity (test spectrum up, predicted training spectrum down)."),
        Block("table", header=["split", "formula", "true", "predicted", "score", "Tanimoto"], rows=rows),
        Block("figure", "Mirror plots", png=png, name="confusions"),
    ]


# ====================================================================== plots
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on environment
        return None
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plot_ablation(rows, splits) -> bytes:
    plt = _pyplot()
    if plt is None:
        return b""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, key, name in ((axes[0], "mean_tanimoto", "over scored"), (axes[1], "mean_tanimoto_all", "over all test")):
        for i, s in enumerate(splits):
            color = f"C{i}"
            for mp, style in ((0.0, "-"), (1.0, "--")):
                pts = sorted((r["intensity_power"], r[key]) for r in rows
                             if r["split"] == s and r["mz_power"] == mp and not r["shuffle"] and r[key] is not None)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, color=color,
                            label=f"{s}" + (" (mz^1)" if mp else ""))
            sh = [r for r in rows if r["split"] == s and r["shuffle"] and r[key] is not None]
            for r in sh:
                ax.plot([r["intensity_power"]], [r[key]], "x", ms=8, color=color)
        ax.set_xlabel("intensity_power (x = shuffled)")
        ax.set_title(f"mean Tanimoto {name}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Tanimoto")
    axes[1].legend(fontsize=7, loc="best")
    return _png(fig)


def _plot_histograms(evals) -> bytes:
    plt = _pyplot()
    if plt is None:
        return b""
    evals = [(l, r) for l, r in evals if r.get("score_hist") and sum(r["score_hist"]["same"]) + sum(r["score_hist"]["different"])][:6]
    if not evals:
        return b""
    labels = [l for l, _ in evals]
    fig, axes = plt.subplots(1, len(evals), figsize=(2.7 * len(evals) + 0.5, 2.7), squeeze=False, sharey=True)
    for ax, (label, r) in zip(axes[0], evals):
        h = r["score_hist"]
        edges = h["edges"]
        # each class as a fraction of its own count: the rarer class stays visible
        for key, name, color in (("same", "same molecule", "C0"), ("different", "different molecule", "C1")):
            counts = h[key]
            tot = sum(counts)
            if tot:
                ax.stairs([c / tot for c in counts], edges, fill=True, alpha=0.45, color=color, label=f"{name} (n={tot:,})")
        title = label if labels.count(label) == 1 else f"{label}\n{_setting(r)}"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("top-1 score", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    axes[0][0].set_ylabel("fraction of predictions", fontsize=8)
    return _png(fig)


def _plot_mirrors(examples) -> bytes:
    plt = _pyplot()
    if plt is None:
        return b""
    fig, axes = plt.subplots(1, len(examples), figsize=(3.2 * len(examples), 2.8), squeeze=False)
    for ax, (label, e) in zip(axes[0], examples):
        q, l = e["query_peaks"], e["library_peaks"]
        ax.vlines(q["mz"], 0, q["intensity"], color="C0", lw=1)
        ax.vlines(l["mz"], 0, [-v for v in l["intensity"]], color="C3", lw=1)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylim(-1.05, 1.05)
        xs = list(q["mz"]) + list(l["mz"]) + [p for p in (q.get("precursor_mz"), l.get("precursor_mz")) if p]
        if xs:  # at least 20 Da wide, no offset notation (a lone peak otherwise gets a 1e-4 Da axis)
            lo, hi = min(xs), max(xs)
            pad = max(5.0, (20.0 - (hi - lo)) / 2)
            ax.set_xlim(max(0.0, lo - pad), hi + pad)
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
        ax.set_title(f"{label}: {e.get('formula')}\nscore {e['score']:.2f}, Tanimoto {e['tanimoto']:.2f}", fontsize=8)
        ax.set_xlabel("m/z", fontsize=8)
        ax.tick_params(labelsize=7)
    return _png(fig)


# ====================================================================== writers
def to_markdown(blocks: Sequence[Block], figure_dir: Path | None = None, base_dir: Path | None = None, figure_prefix: str = "") -> str:
    """Markdown text; figures are written as PNGs into ``figure_dir`` (skipped when None) and linked
    relative to ``base_dir`` (the markdown file's folder)."""
    import os

    lines: list[str] = []
    used: dict[str, int] = {}
    for b in blocks:
        if b.kind == "h":
            lines += ["#" * b.level + " " + b.text, ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(str(h) for h in b.header) + " |")
            lines.append("|" + "|".join(" --- " for _ in b.header) + "|")
            for r in b.rows:
                lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
            lines.append("")
        elif b.kind == "figure" and figure_dir is not None:
            figure_dir.mkdir(parents=True, exist_ok=True)
            used[b.name] = used.get(b.name, 0) + 1  # two ablations both have an "ablation" figure
            fname = f"{figure_prefix}{b.name}{'' if used[b.name] == 1 else '_' + str(used[b.name])}.png"
            (figure_dir / fname).write_bytes(b.png)
            rel = os.path.relpath(figure_dir / fname, base_dir or figure_dir.parent)
            lines += [f"![{b.text}]({Path(rel).as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"


def to_html(blocks: Sequence[Block], title: str = "fastspec report") -> str:
    """Self-contained HTML (figures base64-embedded)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
        "td:first-child{text-align:left}img{max-width:100%}code{background:#f3f3f3}</style></head><body>",
    ]
    for b in blocks:
        if b.kind == "h":
            parts.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif b.kind == "p":
            text = esc(b.text)
            # `code` spans from the markdown source
            segs = text.split("`")
            text = "".join(s if i % 2 == 0 else f"<code>{s}</code>" for i, s in enumerate(segs))
            parts.append(f"<p>{text}</p>")
        elif b.kind == "table":
            parts.append("<table><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in b.header) + "</tr>")
            for r in b.rows:
                parts.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>")
            parts.append("</table>")
        elif b.kind == "figure":
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(f"<figure><img alt='{esc(b.text)}' src='data:image/png;base64,{data}'></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render(
    inputs: Sequence,
    markdown: str | Path | None = None,
    html_path: str | Path | None = None,
    *,
    title: str = "Nearest-neighbour baseline evaluation",
    figure_dir: str | Path | None = None,
    figures: bool = True,
    notes: Sequence[str] = (),
) -> dict:
    """Render report/ablation JSONs.

    Parameters
    ----------
    inputs : paths or dicts
    markdown : path, optional
        Markdown output; PNG figures go to ``figure_dir`` (default ``<markdown stem>_figures`` next to it).
    html_path : path, optional
        Self-contained HTML output.
    notes : sequence of str
        Paragraphs (markdown inline syntax) placed under the title.

    Returns
    -------
    dict with the written paths and the number of figures.
    """
    docs = load_inputs(inputs)
    blocks = build_blocks(docs, title, figures=figures, notes=notes)
    written: dict[str, Any] = {"figures": sum(b.kind == "figure" for b in blocks)}
    if markdown is not None:
        md = Path(markdown)
        fdir = Path(figure_dir) if figure_dir is not None else md.parent / f"{md.stem}_figures"
        write_text_atomically(md, to_markdown(blocks, fdir, md.parent))
        written["markdown"] = str(md)
        written["figure_dir"] = str(fdir)
    if html_path is not None:
        write_text_atomically(html_path, to_html(blocks, title))
        written["html"] = str(html_path)
    return written


def report_markdown(reports: Sequence[dict], title: str = "Nearest-neighbour baseline evaluation") -> str:
    """Markdown (tables only, no figures) for one or more reports; used by ``evaluate --markdown``."""
    return to_markdown(build_blocks(list(reports), title, figures=False))
