"""The paper's selectivity tables from a results file (docs/architecture.md).

A results file is the CSV that ``python -m analysis.selectivity`` writes: one
row per unit, with the columns listed in :data:`RESULTS_COLUMNS`. Proportions
(``tcs``, ``precision_*``) are stored as fractions in [0, 1]; the tables show
them as percentages. ``ccmas`` (and ``ccmas_2``) may be NaN for dead units:
such units are counted in every table (``n_ccmas_nan``), never dropped.

Tables (pure functions, one DataFrame each; layers in the order they first
appear in the results):

- :func:`table1` -- % of units per layer meeting the paper's thresholds.
- :func:`table_a1` -- the most selective unit of each layer under CCMAS,
  precision and TCS, with all its measures.
- :func:`table_a2` -- layer means of the measures, NaN-aware.
- :func:`top_class_agreement` -- % of units whose top class is their CCMAS class.

Command line::

    python -m analysis.tables RESULTS.csv --out DIR [--class-names TABLE.h5|NAMES]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .selectivity import COLUMNS

__all__ = [
    "RESULTS_COLUMNS",
    "ResultsError",
    "build_tables",
    "format_markdown",
    "layer_order",
    "load_class_names",
    "main",
    "read_results",
    "render_markdown",
    "table1",
    "table_a1",
    "table_a2",
    "top_class_agreement",
    "write_tables",
]

log = logging.getLogger("analysis.tables")  # the same name under python -m

#: Columns of a results file, in the order the selectivity CLI writes them.
RESULTS_COLUMNS = ("layer", *COLUMNS)

#: Columns holding fractions in [0, 1], shown as percentages.
FRACTION_COLUMNS = ("tcs", "precision_60", "precision_100")

#: Columns holding a class index (-1: none).
CLASS_COLUMNS = tuple(c for c in RESULTS_COLUMNS if c.endswith("_class"))

#: Table 1 criteria: (output column, measure, threshold).
TABLE1_CRITERIA = (
    ("pct_precision_100_ge_50", "precision_100", 0.50),
    ("pct_precision_100_ge_75", "precision_100", 0.75),
    ("pct_ccmas_ge_0.7", "ccmas", 0.7),
    ("pct_ccmas_ge_0.8", "ccmas", 0.8),
    ("pct_ccmas_ge_0.9", "ccmas", 0.9),
    ("pct_tcs_ge_5", "tcs", 0.05),
)

#: Measures averaged in Table A2.
TABLE_A2_MEASURES = ("ccmas", "ccmas_2", "precision_100", "top_cluster_size", "tcs")

#: Measures whose best unit Table A1 shows.
TABLE_A1_CRITERIA = ("ccmas", "precision_100", "tcs")

_NON_NUMERIC = ("layer", "localist", "dead")


class ResultsError(ValueError):
    """A results file or DataFrame cannot be used (the message says where and why)."""


# -- input -------------------------------------------------------------------

def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ResultsError(
            f"{what} needs the column(s) {', '.join(missing)}, which the results lack "
            f"(found: {', '.join(map(str, df.columns)) or 'none'})"
        )
    if len(df) == 0:
        raise ResultsError(f"{what}: the results hold no units (no rows)")


def read_results(path: str | os.PathLike, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a results CSV, checking that it has rows and the ``required`` columns.

    Numeric columns are converted to numbers (an unparsable entry is an error
    naming the column and row); ``layer`` is read as text, ``dead`` as bool.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ResultsError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, dtype={"layer": str, "localist": str}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise ResultsError(f"{path}: the file is empty (expected a results CSV with a header "
                           "row and one row per unit)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not a readable CSV file ({exc})") from None
    try:
        _require(df, required, "the tables")
    except ResultsError as exc:
        raise ResultsError(f"{path}: {exc}") from None
    for col in df.columns:
        if col in _NON_NUMERIC or col not in RESULTS_COLUMNS:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ResultsError(
                f"{path}: column {col!r}, data row {row + 1}: {df[col].iloc[row]!r} is not a number"
            )
        df[col] = values
    if "dead" in df.columns and df["dead"].dtype != bool:
        df["dead"] = df["dead"].astype(str).str.strip().str.lower().isin(["true", "1", "yes"])
    return df


def load_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from an activation table (``.h5``/``.hdf5``) or a names file.

    A names file is either one name per line, or a tab-separated file with a
    header holding a ``name`` column (like ``imagenet1k_classes.tsv``).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ResultsError(f"{path}: no such file (expected class names)")
    if path.lower().endswith((".h5", ".hdf5")):
        from .activations import open_table

        with open_table(path) as table:
            return list(table.class_names)
    with open(path, encoding="utf-8") as fh:
        lines = [line.rstrip("\r\n") for line in fh]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise ResultsError(f"{path}: holds no class names")
    header = lines[0].split("\t")
    if len(header) > 1 and "name" in header:
        col = header.index("name")
        names = []
        for i, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            if len(fields) <= col:
                raise ResultsError(f"{path}: line {i} has no {header[col]!r} field")
            names.append(fields[col])
        return names
    return [line.strip() for line in lines]


def layer_order(df: pd.DataFrame) -> list[str]:
    """Layer names in the order they first appear."""
    return list(dict.fromkeys(df["layer"].astype(str)))


def _by_layer(df: pd.DataFrame) -> Iterable[tuple[str, pd.DataFrame]]:
    layers = df["layer"].astype(str)
    for name in layer_order(df):
        yield name, df[layers == name]


def _pct(count: float, total: int) -> float:
    return 100.0 * count / total if total else math.nan


# -- tables ------------------------------------------------------------------

def table1(df: pd.DataFrame) -> pd.DataFrame:
    """Table 1: per layer, the % of units meeting each selectivity criterion.

    Percentages are of all units of the layer (``n_units``); a unit whose
    measure is NaN (a dead unit's CCMAS) meets no criterion and is counted in
    ``n_ccmas_nan``.
    """
    measures = sorted({m for _, m, _ in TABLE1_CRITERIA})
    _require(df, ["layer", *measures], "Table 1")
    rows = []
    for name, part in _by_layer(df):
        n = len(part)
        row = {"layer": name, "n_units": n}
        for col, measure, threshold in TABLE1_CRITERIA:
            # A small tolerance: 0.75 stored as 0.7499999999 still meets 75%.
            row[col] = _pct(int((part[measure] >= threshold - 1e-9).sum()), n)
        row["n_ccmas_nan"] = int(part["ccmas"].isna().sum())
        rows.append(row)
    return pd.DataFrame(rows)


def table_a2(df: pd.DataFrame) -> pd.DataFrame:
    """Table A2: per layer, the mean of each measure over its non-NaN units.

    Columns ``mean_<measure>`` (fractions shown as ``mean_<measure>_pct``),
    ``sd_<measure>`` likewise, and ``n_nan_<measure>``: the units left out of
    that mean because the measure is NaN.
    """
    _require(df, ["layer", *TABLE_A2_MEASURES], "Table A2")
    rows = []
    for name, part in _by_layer(df):
        row = {"layer": name, "n_units": len(part)}
        for m in TABLE_A2_MEASURES:
            values = part[m].astype(float)
            scale, suffix = (100.0, "_pct") if m in FRACTION_COLUMNS else (1.0, "")
            n_ok = int(values.notna().sum())
            row[f"mean_{m}{suffix}"] = scale * values.mean() if n_ok else math.nan
            row[f"sd_{m}{suffix}"] = scale * values.std(ddof=1) if n_ok > 1 else math.nan
            row[f"n_nan_{m}"] = len(part) - n_ok
        rows.append(row)
    return pd.DataFrame(rows)


def table_a1(df: pd.DataFrame, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Table A1: per layer, the unit with the highest CCMAS, precision_100 and TCS.

    One row per (layer, criterion) with every column of the results for that
    unit. Ties go to the lowest unit index; ``n_tied`` says how many units of
    the layer share the maximum. NaN values are ignored; a layer where a
    measure is NaN for every unit gets no row for it (with a warning).
    With ``class_names``, a ``<column>_name`` column follows each class column.
    """
    _require(df, ["layer", "unit", *TABLE_A1_CRITERIA], "Table A1")
    rows = []
    for name, part in _by_layer(df):
        part = part.sort_values("unit", kind="stable")
        for criterion in TABLE_A1_CRITERIA:
            values = part[criterion].astype(float)
            if values.notna().sum() == 0:
                log.warning("Table A1: layer %s: %s is NaN for every unit; no row",
                            name, criterion)
                continue
            best = values.max()
            tied = values == best
            idx = tied.idxmax()  # first True: the lowest unit index
            row = {"layer": name, "criterion": criterion, "n_tied": int(tied.sum())}
            row.update(part.loc[idx].drop(labels=["layer"]).to_dict())
            rows.append(row)
    out = pd.DataFrame(rows)
    if class_names is not None and len(out):
        out = _add_class_names(out, class_names)
    return out


def _add_class_names(df: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    out = df.copy()
    for col in [c for c in df.columns if c in CLASS_COLUMNS]:
        def name_of(v, col=col):
            if pd.isna(v) or int(v) < 0:
                return ""
            if int(v) >= len(class_names):
                raise ResultsError(
                    f"column {col!r}: class index {int(v)} is outside the "
                    f"{len(class_names)} class names given"
                )
            return class_names[int(v)]

        pos = out.columns.get_loc(col) + 1
        out.insert(pos, f"{col}_name", out[col].map(name_of))
    return out


def top_class_agreement(df: pd.DataFrame) -> pd.DataFrame:
    """Per layer, the % of units whose top class (TCS) is their CCMAS class.

    Units whose CCMAS is NaN, or whose ``ccmas_class`` is missing or negative,
    have no CCMAS class: they are left out of the percentage and counted in
    ``n_excluded``.
    """
    _require(df, ["layer", "top_class", "ccmas_class", "ccmas"], "top-class agreement")
    rows = []
    for name, part in _by_layer(df):
        ok = part["ccmas"].notna() & part["ccmas_class"].notna() & (part["ccmas_class"] >= 0)
        ok &= part["top_class"].notna()
        n_ok = int(ok.sum())
        agree = int((part.loc[ok, "top_class"] == part.loc[ok, "ccmas_class"]).sum())
        rows.append({
            "layer": name,
            "n_units": len(part),
            "n_compared": n_ok,
            "n_excluded": len(part) - n_ok,
            "n_agree": agree,
            "pct_agree": _pct(agree, n_ok),
        })
    return pd.DataFrame(rows)


# -- Markdown ------------------------------------------------------------------

def _fmt(value, digits: int) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer() and abs(value) < 1e15 and digits == 0:
            return str(int(value))
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def format_markdown(df: pd.DataFrame, digits: int | dict[str, int] = 1,
                    headers: dict[str, str] | None = None) -> str:
    """A DataFrame as a GitHub Markdown table (numbers right-aligned)."""
    headers = headers or {}
    cols = list(df.columns)

    def digits_of(col):
        return digits.get(col, 3) if isinstance(digits, dict) else digits

    head = [headers.get(c, str(c)) for c in cols]
    body = [[_fmt(v, digits_of(c)) for c, v in zip(cols, row, strict=True)]
            for row in df.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
               for c in cols]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(head)]

    def line(cells):
        return "| " + " | ".join(
            cell.rjust(w) if num else cell.ljust(w)
            for cell, w, num in zip(cells, widths, numeric, strict=True)
        ) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric, strict=True)) + "|"
    return "\n".join([line(head), rule] + [line(r) for r in body])


_T1_HEADERS = {
    "layer": "layer", "n_units": "units",
    "pct_precision_100_ge_50": "precision ≥ 50%", "pct_precision_100_ge_75": "precision ≥ 75%",
    "pct_ccmas_ge_0.7": "CCMAS ≥ 0.7", "pct_ccmas_ge_0.8": "CCMAS ≥ 0.8",
    "pct_ccmas_ge_0.9": "CCMAS ≥ 0.9", "pct_tcs_ge_5": "TCS ≥ 5%",
    "n_ccmas_nan": "CCMAS NaN",
}


def _a1_markdown(a1: pd.DataFrame) -> str:
    """Table A1 transposed: one column per (layer, criterion), one row per measure."""
    if a1.empty:
        return "(no units)"
    labels = [f"{r.layer}: max {r.criterion}" for r in a1.itertuples()]
    measures = [c for c in a1.columns if c not in ("layer", "criterion")]
    rows = []
    for m in measures:
        cells = []
        for v in a1[m]:
            if m in FRACTION_COLUMNS and not pd.isna(v):
                cells.append(f"{100 * v:.1f}%")
            elif m in CLASS_COLUMNS or m in ("unit", "n_tied", "top_cluster_size"):
                cells.append(_fmt(v, 0))
            elif m == "localist":
                cells.append("" if pd.isna(v) else str(v))
            elif isinstance(v, (float, np.floating)):
                cells.append(_fmt(v, 3))
            else:
                cells.append("" if pd.isna(v) else _fmt(v, 3))
        rows.append([m, *cells])
    table = pd.DataFrame(rows, columns=["measure", *labels])
    return format_markdown(table)


_A2_LABELS = {"ccmas": "CCMAS", "ccmas_2": "CCMAS_2", "precision_100": "precision (%)",
              "top_cluster_size": "top cluster size", "tcs": "TCS (%)"}


def _a2_display(a2: pd.DataFrame) -> pd.DataFrame:
    """Table A2 for reading: one 'mean ± sd' cell per measure, NaN counts in one column."""
    out = pd.DataFrame({"layer": a2["layer"], "units": a2["n_units"]})
    for m in TABLE_A2_MEASURES:
        suffix = "_pct" if m in FRACTION_COLUMNS else ""
        digits = 1 if suffix else 2 if m == "top_cluster_size" else 3
        if f"mean_{m}{suffix}" not in a2.columns:
            continue
        out[_A2_LABELS.get(m, m)] = [
            f"{_fmt(mu, digits)} ± {_fmt(sd, digits)}"
            for mu, sd in zip(a2[f"mean_{m}{suffix}"], a2[f"sd_{m}{suffix}"], strict=True)
        ]
    nan_cols = [c for c in a2.columns if c.startswith("n_nan_")]
    out["NaN values"] = [
        ", ".join(f"{c[len('n_nan_'):]} {int(v)}" for c, v in zip(nan_cols, row, strict=True)
                  if v) or "none"
        for row in a2[nan_cols].itertuples(index=False)
    ]
    return out


def render_markdown(tables: dict[str, pd.DataFrame]) -> str:
    """All tables as one Markdown document (keys: table1, tableA2, tableA1, top_vs_ccmas)."""
    parts = ["# Selectivity tables", ""]
    if "table1" in tables:
        parts += [
            "## Table 1: % of units meeting each criterion", "",
            "Percentages of all units of the layer; units with NaN CCMAS (dead) "
            "meet no CCMAS criterion.", "",
            format_markdown(tables["table1"], digits={**dict.fromkeys(_T1_HEADERS, 1),
                                                     "n_units": 0, "n_ccmas_nan": 0},
                            headers=_T1_HEADERS), "",
        ]
    if "tableA2" in tables:
        parts += [
            "## Table A2: layer means ± SD", "",
            "Precision and TCS in percent. NaN values are left out of the means and "
            "counted in the last column.", "",
            format_markdown(_a2_display(tables["tableA2"])), "",
        ]
    if "tableA1" in tables:
        parts += [
            "## Table A1: the most selective unit of each layer", "",
            "Ties go to the lowest unit index; n_tied counts the units at the maximum.", "",
            _a1_markdown(tables["tableA1"]), "",
        ]
    if "top_vs_ccmas" in tables:
        parts += [
            "## Top class (TCS) vs CCMAS class", "",
            "Units with NaN CCMAS are excluded (n_excluded).", "",
            format_markdown(tables["top_vs_ccmas"],
                            digits={"pct_agree": 1, **dict.fromkeys(
                                ["n_units", "n_compared", "n_excluded", "n_agree"], 0)}),
            "",
        ]
    return "\n".join(parts)


# -- files ---------------------------------------------------------------------

def build_tables(df: pd.DataFrame, class_names: Sequence[str] | None = None
                 ) -> dict[str, pd.DataFrame]:
    """Every table, keyed by its file stem."""
    return {
        "table1": table1(df),
        "tableA2": table_a2(df),
        "tableA1": table_a1(df, class_names),
        "top_vs_ccmas": top_class_agreement(df),
    }


def write_tables(tables: dict[str, pd.DataFrame], out_dir: str | os.PathLike) -> list[str]:
    """Write each table as ``<key>.csv`` and all of them as ``tables.md``; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for key, table in tables.items():
        path = os.path.join(out_dir, f"{key}.csv")
        table.to_csv(path, index=False)
        paths.append(path)
    md = os.path.join(out_dir, "tables.md")
    with open(md, "w", encoding="utf-8") as fh:
        fh.write(render_markdown(tables))
    paths.append(md)
    return paths


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m analysis.tables",
        description="Tables 1, A1, A2 and top-class vs CCMAS-class agreement from a "
                    "selectivity results CSV.",
    )
    parser.add_argument("results", help="results CSV written by analysis.selectivity")
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--class-names", metavar="TABLE.h5|NAMES",
                        help="activation table or names file (one per line, or a TSV with a "
                             "'name' column) to name the classes in Table A1")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        names = load_class_names(args.class_names) if args.class_names else None
        df = read_results(args.results, required=("layer", "unit"))
        try:
            tables = build_tables(df, names)
        except ResultsError as exc:
            raise ResultsError(f"{args.results}: {exc}") from None
    except ValueError as exc:  # ResultsError, ActivationTableError: already name the file
        log.error("%s", exc)
        return 2
    paths = write_tables(tables, args.out)
    print(render_markdown(tables))
    log.info("wrote %s", ", ".join(paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
