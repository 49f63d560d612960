"""Terminal output that fits the console (80 columns and up): seconds, names, tables, long lines.

- :func:`fmt_seconds`: ``0.42 s``, ``3.1 s``, ``41 s`` — sub-second times keep their decimals;
- :func:`wrap_name`: a name (``galerkin-reg(lam=0.01)``, ``classifier.weight``) broken into lines at
  its punctuation, never cut with an ellipsis;
- :func:`fit_table`: a rich table narrowed to the console: long headers wrap at their spaces, then the
  name columns wrap (:func:`wrap_name`); every column folds rather than ellipsises;
- :func:`wrap_line`: a long plain line (a progress line, a one-line summary) wrapped with a hanging indent.
"""

from __future__ import annotations

import re
import textwrap
from typing import Iterable, Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

MIN_NAME_WIDTH = 8
MIN_HEADER_SAVING = 4


def fmt_seconds(seconds: float | None, unit: bool = True) -> str:
    """Seconds for a table cell: two significant digits below 10 s (``0.42``, ``0.042``, ``3.1``), whole
    seconds from 10 s (``41``, ``1234``); ``—`` for None."""
    if seconds is None:
        return "—"
    s = float(seconds)
    if s != s:  # NaN
        return "—"
    if abs(s) >= 9.95:
        text = f"{s:.0f}"
    elif s == 0:
        text = "0"
    elif abs(s) >= 1:
        text = f"{s:.1f}"
    else:
        text = f"{s:#.2g}"
    return f"{text} s" if unit else text


_BREAK = re.compile(r"(?<=[.\-_,/=:])|(?=[(\[])")  # after . - _ , / = :  and before ( [


def wrap_name(name: str, width: int) -> str:
    """``name`` on lines of at most ``width`` cells, broken after ``. - _ , / = :`` and before ``( [``
    (a piece longer than ``width`` is folded); the characters are all kept, in order."""
    width = max(1, width)
    lines: list[str] = []
    for part in str(name).split("\n"):
        lead = part[:len(part) - len(part.lstrip(" "))]
        lead = lead if len(lead) < width // 2 else ""  # continuation lines keep an option's indent
        line = ""
        for piece in (p for p in _BREAK.split(part) if p):
            if line.strip() and len(line) + len(piece) > width:
                lines.append(line)
                line = lead
            while len(line) + len(piece) > width:
                room = width - len(line)
                lines.append(line + piece[:room])
                piece = piece[room:]
                line = lead
            line += piece
        lines.append(line)
    return "\n".join(lines)


def wrap_line(text: str, width: int = 80, indent: int = 2) -> str:
    """One long line wrapped at spaces to ``width`` (continuation lines indented by ``indent``); a word
    longer than the line (a path) is folded."""
    if len(text) <= width:
        return text
    return "\n".join(textwrap.wrap(text, width=width, subsequent_indent=" " * indent, break_long_words=True,
                                   break_on_hyphens=False))


def wrap_items(items: Sequence[str], width: int = 80, sep: str = "; ", indent: int = 0) -> str:
    """A footnote of ``items`` (``"start: right after the transfer"``, …) joined by ``sep`` on lines of at
    most ``width``, breaking between items; an item longer than a line wraps at its spaces."""
    lines: list[str] = []
    line = ""
    for k, item in enumerate(items):
        piece = item + (sep.rstrip() if k < len(items) - 1 else "")
        joined = f"{line} {piece}" if line else piece
        if len(joined) <= width:
            line = joined
            continue
        if len(piece) > width:  # a long item fills the line it starts on
            wrapped = wrap_line(joined, width, indent).split("\n")
            line = ""
        elif line:
            lines.append(line)
            wrapped = [piece]
        else:
            wrapped = [piece]
        lines += wrapped[:-1]
        line = wrapped[-1]
    if line:
        lines.append(line)
    return "\n".join(lines)


def _plain(cell) -> str:
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        return Text.from_markup(cell).plain
    return ""


def _width_of(console: Console, cells: Iterable) -> int:
    opts = console.options.update_width(10_000)
    return max((Measurement.get(console, opts, c).maximum for c in cells), default=0)


def fit_table(table: Table, console: Console, names: Sequence[int] = (0,)) -> Table:
    """``table`` narrowed to ``console.width`` without cutting anything, in this order: long headers wrap at
    their spaces (``Galerkin residual``; the longest saving first), then the widest of the ``names``
    columns (broken at their punctuation, :func:`wrap_name`, down to 8 cells) and of the free-text
    columns (wrapping at their spaces, down to their longest word) narrow one cell at a time. Numbers
    (``no_wrap`` columns) never wrap; every column folds rather than ellipsises where even that is not
    enough. Returns the same table."""
    for col in table.columns:
        col.overflow = "fold"
    opts = console.options.update_width(10_000)
    cols = table.columns
    meas = [table._measure_column(console, opts, c) for c in cols]
    widths = [m.maximum for m in meas]
    pads = [table._get_padding_width(c._index) for c in cols]
    excess = sum(widths) + table._extra_width - console.width
    if excess <= 0:
        return table
    names = [i for i in names if i < len(cols)]
    # 1) headers wider than their cells wrap at their spaces (numbers never do)
    savings = []
    for i, col in enumerate(cols):
        header = _plain(col.header)
        if i in names or " " not in header or not isinstance(col.header, str):
            continue
        target = max(_width_of(console, col._cells), max(len(w) for w in header.split()))
        if len(header) - target >= MIN_HEADER_SAVING:  # "Galerkin residual", not "ep. 1"
            savings.append((len(header) - target, i, target))
    for _, i, target in sorted(savings, reverse=True):
        if excess <= 0:
            break
        col = cols[i]
        col.header = "\n".join(textwrap.wrap(_plain(col.header), target, break_long_words=False))
        new = table._measure_column(console, opts, col).maximum
        excess -= widths[i] - new
        widths[i] = new
    # 2) the widest name or text column narrows, down to its floor
    text = [i for i, c in enumerate(cols) if i not in names and not c.no_wrap and c.width is None]
    floor = {}
    for i in names:
        words = _plain(cols[i].header).split() or [""]
        floor[i] = max([MIN_NAME_WIDTH, *(len(w) for w in words)]) + pads[i]
    for i in text:
        floor[i] = meas[i].minimum  # the longest word (header included)
    target = {i: widths[i] for i in floor}
    while excess > 0:
        free = [i for i in floor if target[i] > floor[i]]
        if not free:
            break
        widest = max(free, key=lambda i: target[i])
        target[widest] -= 1
        excess -= 1
    for i, w in target.items():
        if w >= widths[i]:
            continue
        col = cols[i]
        if i in names:
            col._cells = [Text(wrap_name(_plain(c), w - pads[i]), style=c.style if isinstance(c, Text) else "")
                          for c in col._cells]
        col.width = w - pads[i]
        col.min_width = col.max_width = None
    return table
