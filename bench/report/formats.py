"""A table as Markdown, HTML and CSV: escaping, alignment, highlighting, and the files of tables/<name>.*.

Every string that comes from result files is escaped: Markdown gets no raw HTML and no broken '|' columns; HTML
goes through pandas' Styler with escape="html".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.results import atomic_write_text


def to_markdown(table: pd.DataFrame, index: bool = False) -> str:
    """GitHub Markdown; strings from result files are escaped (no raw HTML, no broken '|' columns)."""
    safe = table.reset_index() if index else table.copy()  # the index as a named first column
    safe.columns = [md_escape(c) for c in safe.columns]
    for col in safe.columns:
        safe[col] = safe[col].map(md_escape)
    return safe.to_markdown(index=False, disable_numparse=True)


def md_escape(value: Any) -> str:
    """Markdown-safe text: without '<' no HTML tag can start; '|' would split a table cell; one line per cell."""
    return " ".join(str(value).split()).replace("<", "&lt;").replace("|", "\\|")


def to_html(table: pd.DataFrame, name: str, highlight: pd.DataFrame | None = None, index: bool = False) -> str:
    """pandas Styler table with every cell and header HTML-escaped; `highlight` marks cells (the fastest) in bold."""
    if index:  # the index as a named first column, like the Markdown table
        highlight = None if highlight is None else highlight.reindex(index=table.index, columns=table.columns,
                                                                        fill_value=False).reset_index(drop=True)
        table = table.reset_index()
    styler = table.style.format(escape="html").format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    styler = styler.set_uuid(css_id(name)).hide(axis="index")
    numeric = [c for c in table.columns if table[c].astype(str).str.match(r"^[-\d.∞—]").mean() > 0.5]
    if numeric:  # numbers right-aligned so magnitudes line up; text stays left
        styler = styler.set_properties(subset=numeric, **{"text-align": "right"})
    if highlight is not None:
        css = highlight.reindex(index=table.index, columns=table.columns, fill_value=False).astype(bool)
        styler = styler.apply(lambda _: css.replace({True: "font-weight: bold; background: #e6f4ea", False: ""}),
                              axis=None)
    return styler.to_html()


def css_id(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:40] or "t"


def table_paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "html")}


def write_table(table: pd.DataFrame, out_dir: Path, name: str, numbers: pd.DataFrame | None = None,
                highlight: pd.DataFrame | None = None, index: bool = False) -> dict[str, Path]:
    """tables/<name>.csv (+ .md, .html); the CSV gets `numbers` (machine-readable) when given."""
    paths = table_paths(out_dir, name)
    csv = (numbers if numbers is not None else table).map(lambda v: "|".join(map(str, v)) if isinstance(v, list) else v)
    atomic_write_text(paths["csv"], csv.to_csv(index=index))
    atomic_write_text(paths["md"], to_markdown(table, index=index) + "\n")
    body = to_html(table, name, highlight=highlight, index=index)
    atomic_write_text(paths["html"], f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{css_id(name)}"
                                     f"</title></head><body>\n{body}\n</body></html>\n")
    return paths
