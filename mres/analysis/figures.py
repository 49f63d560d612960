"""Writing figures, and checking their layout (every figure mres writes goes through ``save_figure``).

A figure is written twice: PNG for the HTML report and the terminal, and PDF beside it (vector, for a
paper). ``layout_problems`` draws a figure once and lists every drawn text whose box — matplotlib's own
``get_window_extent`` with the renderer of that draw — leaves the figure, overlaps another drawn text, or
reaches into the area of an axes it does not belong to (where that axes' background would cover it: the
3-D z label the next panel cut off). Only texts that are actually drawn count: a tick label outside the
view limits exists but is not drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOLERANCE_PX = 1.0  # boxes touching within a pixel are not a problem (anti-aliasing, rounding)


def save_figure(fig: Any, png: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``png`` and the same name with ``.pdf`` (vector); make the folder; close the figure."""
    import matplotlib.pyplot as plt

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    paths = [png, png.with_suffix(".pdf")]
    try:
        for p in paths:
            fig.savefig(p, dpi=dpi)
    finally:
        plt.close(fig)
    return paths


def drawn_texts(fig: Any) -> list[tuple[Any, Any]]:
    """(text artist, its window extent) for every non-empty text drawn by one draw of ``fig``."""
    from matplotlib.text import Text

    seen: list[tuple[Any, Any]] = []
    original = Text.draw

    def draw(self: Text, renderer: Any) -> None:
        original(self, renderer)
        if self.get_visible() and self.get_text().strip() and renderer is not None:
            seen.append((self, self.get_window_extent(renderer)))

    Text.draw = draw  # type: ignore[method-assign]  (for this one draw: the texts matplotlib draws)
    try:
        fig.canvas.draw()
    finally:
        Text.draw = original  # type: ignore[method-assign]
    unique: dict[int, tuple[Any, Any]] = {}
    for t, bb in seen:  # an artist drawn twice (a 3-D axis redraws its labels) counts once, last box
        unique[id(t)] = (t, bb)
    return list(unique.values())


def layout_problems(fig: Any, tolerance: float = TOLERANCE_PX) -> list[str]:
    """Texts of ``fig`` that leave the figure or overlap another text, one line each (empty: none)."""
    texts = drawn_texts(fig)
    width, height = fig.bbox.width, fig.bbox.height
    problems = []
    for t, bb in texts:
        if bb.x0 < -tolerance or bb.y0 < -tolerance or bb.x1 > width + tolerance or bb.y1 > height + tolerance:
            problems.append(f"{_name(t)} at x {bb.x0:.0f}–{bb.x1:.0f}, y {bb.y0:.0f}–{bb.y1:.0f} leaves the "
                            f"{width:.0f}×{height:.0f} figure")
    for i, (a, ba) in enumerate(texts):
        for b, bb in texts[i + 1:]:
            w, h = _overlap(ba, bb)
            if w > tolerance and h > tolerance:
                problems.append(f"{_name(a)} overlaps {_name(b)} ({w:.0f}×{h:.0f} px)")
    from matplotlib.text import Text

    areas = [(ax, ax.get_window_extent()) for ax in fig.axes if ax.get_visible()]
    owners = {id(t): ax for ax in fig.axes for t in ax.findobj(Text)}  # 3-D tick labels know no .axes
    for t, bb in texts:
        own = t.axes or owners.get(id(t))
        for ax, box in areas:
            if own is not None and (ax is own or _same_box(box, own.get_window_extent())):
                continue  # its own axes, or a twin on the same area
            w, h = _overlap(bb, box)
            if w > tolerance and h > tolerance:
                problems.append(f"{_name(t)} reaches {w:.0f}×{h:.0f} px into the axes titled "
                                f"{ax.get_title()!r} (drawn over by it)")
    return problems


def _overlap(a: Any, b: Any) -> tuple[float, float]:
    return min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)


def _same_box(a: Any, b: Any) -> bool:
    return max(abs(a.x0 - b.x0), abs(a.x1 - b.x1), abs(a.y0 - b.y0), abs(a.y1 - b.y1)) < 1.0



def _name(t: Any) -> str:
    text = t.get_text().replace("\n", " ")
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{type(t).__name__} {text!r}"
