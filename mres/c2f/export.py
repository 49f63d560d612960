"""Tables out of mres, for spreadsheets and papers: CSV (the ``csv`` module) and LaTeX (booktabs).

A table is a header and rows of cells as the reports show them (Markdown marks, ``mean ± std``, unicode
such as × λ →).  CSV keeps the text, marks removed; LaTeX escapes every special character, writes
``±`` as ``$\\pm$`` and the other symbols as their commands, so a cell like ``galerkin-reg(lam=0.1)`` or
``fine_only`` compiles as written.  One file per table; names come from the section titles.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Sequence

_MARKS = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`|(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])")
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "×": r"$\times$", "λ": r"$\lambda$", "θ": r"$\theta$", "Δ": r"$\Delta$",
                  "→": r"$\rightarrow$", "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$", "−": "-",
                  "–": "--", "—": "---", "‖": r"$\|$", "·": r"$\cdot$", "μ": r"$\mu$", "σ": r"$\sigma$",
                  "α": r"$\alpha$", "²": r"$^2$", "…": r"\dots{}", "✓": "yes", "✗": "no", "°": r"$^\circ$"}


def plain(cell: Any) -> str:
    """A report cell without its Markdown marks (``**x**``, ```x```, ``*x*`` → ``x``)."""
    text = "" if cell is None else str(cell)
    return _MARKS.sub(lambda m: next(g for g in m.groups() if g is not None), text)


def latex_escape(text: str) -> str:
    """``text`` as LaTeX source that prints it (special characters escaped, symbols as commands; any other
    non-ASCII character is kept, for a document with ``\\usepackage[utf8]{inputenc}``)."""
    out: list[str] = []
    math: list[str] = []  # adjacent math symbols share one $…$
    for ch in text:
        sym = _LATEX_SYMBOLS.get(ch)
        if sym is not None and sym.startswith("$"):
            math.append(sym[1:-1])
            continue
        if math:
            out.append("$" + " ".join(math) + "$")
            math = []
        out.append(_LATEX_SPECIAL.get(ch) or sym or ch)
    if math:
        out.append("$" + " ".join(math) + "$")
    return "".join(out)


def to_csv(head: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([plain(h) for h in head])
    writer.writerows([[plain(c) for c in row] for row in rows])
    return buf.getvalue()


def to_latex(head: Sequence[Any], rows: Sequence[Sequence[Any]], caption: str | None = None,
             label: str | None = None) -> str:
    """A ``table`` with one booktabs ``tabular``: the first column left-aligned, the others right-aligned."""
    n = len(head)
    spec = "l" + "r" * (n - 1)
    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
              " & ".join(latex_escape(plain(h)) for h in head) + r" \\", r"\midrule"]
    for row in rows:
        cells = [latex_escape(plain(c)) for c in row] + [""] * (n - len(row))
        lines.append(" & ".join(cells[:n]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def latex_document(tables: Sequence[str]) -> str:
    """A standalone document around ``tables`` (to check that they compile)."""
    return "\n".join([r"\documentclass{article}", r"\usepackage[utf8]{inputenc}", r"\usepackage[T1]{fontenc}",
                      r"\usepackage{booktabs}", r"\begin{document}", *tables, r"\end{document}", ""])


def slug(title: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", plain(title).lower()).strip("-")
    return s[:60].rstrip("-") or "table"


def export_tables(tables: Sequence[tuple[str, Sequence[Any], Sequence[Sequence[Any]]]],
                  csv_dir: Path | None = None, latex_dir: Path | None = None) -> list[Path]:
    """Write each ``(title, head, rows)`` as ``NN-title.csv`` / ``.tex``; returns the files written."""
    written: list[Path] = []
    for k, (title, head, rows) in enumerate(tables, 1):
        stem = f"{k:02d}-{slug(title)}"
        if csv_dir is not None:
            Path(csv_dir).mkdir(parents=True, exist_ok=True)
            path = Path(csv_dir) / f"{stem}.csv"
            path.write_text(to_csv(head, rows))
            written.append(path)
        if latex_dir is not None:
            Path(latex_dir).mkdir(parents=True, exist_ok=True)
            path = Path(latex_dir) / f"{stem}.tex"
            path.write_text(to_latex(head, rows, caption=plain(title), label=f"tab:{slug(title)}"))
            written.append(path)
    return written
