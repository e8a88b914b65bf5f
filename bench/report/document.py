"""The document model of every report: sections of text, bullet, table and figure blocks, rendered to Markdown and
self-contained HTML by two Jinja2 templates (bench/report/templates/report.{md,html}.j2).

Building a Document writes nothing; `render` writes report.md and report.html. Every string that comes from result
files is escaped: HTML autoescape, and Markdown escaping of '<' and '|'. The HTML embeds its plots as data URIs and
its styles inline: nothing is fetched.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup

from bench.report.formats import md_escape, to_html, to_markdown
from bench.results import atomic_write_text
from bench.schema import slug

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Block:
    """One piece of a section. kind: "text", "note" (small print), "bullets" ([(label, text)]), "warning", "table",
    "figure", "figures" ([(path, caption)], side by side in HTML), "links", "code" (text to paste)."""

    kind: str
    text: str = ""
    items: list[Any] = field(default_factory=list)
    md: Markup = Markup("")  # pre-rendered, already escaped (tables)
    html: Markup = Markup("")
    image: Path | None = None


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    folded: bool = False  # HTML shows the title only until it is opened (<details>); Markdown shows it all
    short: str = ""  # the title in the list of contents, when the title is long

    @property
    def label(self) -> str:
        return self.short or self.title

    @property
    def anchor(self) -> str:
        return slug(self.title).lower()


@dataclass
class Document:
    title: str
    subtitle: str = ""
    warnings: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)


def table_block(table: pd.DataFrame, name: str, highlight: pd.DataFrame | None = None, index: bool = False,
                caption: str = "") -> Block:
    """A table rendered once for each format (escaped in both)."""
    return Block("table", text=caption, md=Markup(to_markdown(table, index=index)),
                 html=Markup(to_html(table, name, highlight=highlight, index=index)))


def figure_block(path: Path, caption: str) -> Block:
    return Block("figure", text=caption, image=path)


def fenced(text: str) -> Markup:
    """Text for a fenced Markdown code block: verbatim, but it cannot close the fence."""
    return Markup(text.replace("```", "` ` `"))


def render(doc: Document, out_dir: Path) -> Path:
    """Write out_dir/report.md and out_dir/report.html from the templates; returns the path of report.md."""
    import jinja2

    def md_links(path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()

    def data_uri(path: Path) -> str:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")

    loader = jinja2.FileSystemLoader(TEMPLATES)
    html_env = jinja2.Environment(loader=loader, autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                  undefined=jinja2.StrictUndefined)
    md_env = jinja2.Environment(loader=loader, autoescape=False, trim_blocks=True, lstrip_blocks=True,
                                undefined=jinja2.StrictUndefined,
                                finalize=lambda v: v if isinstance(v, Markup) else md_escape(v))
    for env in (html_env, md_env):
        env.filters.update(relpath=md_links, data_uri=data_uri)
    md_env.filters["fenced"] = fenced
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.html", html_env.get_template("report.html.j2").render(doc=doc))
    atomic_write_text(out_dir / "report.md", md_env.get_template("report.md.j2").render(doc=doc))
    return out_dir / "report.md"
