"""Issue 22 (items 6–8): terminal output fits 80 columns, names are wrapped rather than cut, seconds keep
their decimals; the HTML report renders markdown marks and keeps ``mean ± std`` on one line."""

import io
import json
import re

import pytest
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mres.c2f.report import _render_html
from mres.training.terminal import fit_table, fmt_seconds, wrap_items, wrap_line, wrap_name

BOX = "┃│┏┗┡└┌┢┣╇┩┘┐┓┛┤┫"


@pytest.fixture
def columns80(monkeypatch):
    """Every console of mres at 80 columns (as a user's terminal), whatever the environment says."""
    from mres.analysis import runner as analysis
    from mres import cli
    from mres.training import fit as train

    monkeypatch.setenv("COLUMNS", "80")
    for c in (cli.console, cli.err_console, train.console, analysis.console):
        monkeypatch.setattr(c, "_width", None)
    return 80


def check_80(text: str) -> None:
    for line in text.splitlines():
        assert len(line) <= 80, f"{len(line)} columns: {line!r}"
        assert "…" not in line, f"cut with an ellipsis: {line!r}"
        stripped = line.strip()
        if stripped and stripped[0] in BOX:  # a boxed table is not cropped at its right edge
            assert stripped[-1] in BOX, f"cropped: {line!r}"


# ------------------------------------------------------------------ unit level

def test_fmt_seconds_keeps_sub_second_decimals():
    assert fmt_seconds(0.42) == "0.42 s"
    assert fmt_seconds(0.4) == "0.40 s"
    assert fmt_seconds(0.042) == "0.042 s"
    assert fmt_seconds(3.14) == "3.1 s"
    assert fmt_seconds(9.96) == "10 s"
    assert fmt_seconds(41.2) == "41 s"
    assert fmt_seconds(1234.5) == "1234 s"  # round half to even, as Python's format
    assert fmt_seconds(0) == "0 s"
    assert fmt_seconds(None) == "—" and fmt_seconds(float("nan")) == "—"
    assert fmt_seconds(0.42, unit=False) == "0.42"


def test_wrap_name_breaks_at_punctuation_and_keeps_every_character():
    assert wrap_name("galerkin-reg(lam=0.01)[respectral]", 14) == "galerkin-reg\n(lam=0.01)\n[respectral]"
    assert wrap_name("classifier.weight", 12) == "classifier.\nweight"
    assert wrap_name("short", 12) == "short"
    for name in ("abcdefghijklmnopqrstuvwxyz", "smoothers.2.1.B.weight", "  restriction=channelwise"):
        for width in (3, 8, 13):
            out = wrap_name(name, width)
            assert max(len(line) for line in out.split("\n")) <= width
            assert out.replace("\n", "").replace(" ", "") == name.replace(" ", "")


def test_wrap_line_and_items():
    assert wrap_line("short") == "short"
    long = "no --recipe: defaults + --set " + " ".join(f"key{i}.path=value{i}" for i in range(12))
    lines = wrap_line(long, 80, 4).split("\n")
    assert len(lines) > 1 and all(len(l) <= 80 for l in lines) and lines[1].startswith("    ")
    note = wrap_items(["start: right after the transfer", "epoch 1: after the first fine epoch (means)",
                       "x" * 30, "final: mean ± std"], 50)
    assert "epoch 1: after the first fine epoch (means);" in note.split("\n")  # items are not broken
    assert all(len(l) <= 50 for l in note.split("\n"))


def test_fit_table_wraps_names_instead_of_cutting_them():
    table = Table(title="t")
    table.add_column("strategy")
    for col in ("start", "final", "Galerkin residual", "time s"):
        table.add_column(col, justify="right", no_wrap=col != "Galerkin residual")
    names = ["galerkin-reg(lam=0.01)[respectral]", "classifier.weight", "fine-only"]
    for n in names:
        table.add_row(Text(n), "56.9", "85.2 ± 0.5", "1.23e-05", "0.42")
    out = io.StringIO()
    console = Console(file=out, width=50, color_system=None)
    console.print(fit_table(table, console))
    text = out.getvalue()
    check_80(text)
    assert all(len(line) <= 50 for line in text.splitlines()), text
    assert "85.2 ± 0.5" in text and "0.42" in text  # numbers are never wrapped
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    for n in names:
        assert n in cells, (n, text)


# ------------------------------------------------------------------ the real commands at 80 columns

def c2f_args(npz) -> list[str]:
    return ["coarse-to-fine", "--set", "trials=1", "--set", "dataset.name=npz", "--set", f"dataset.path={npz}",
            "--set", "resolutions=[8,16]", "--set", "coarse.epochs=1", "--set", "fine.epochs=1",
            "--set", "strategies=[fine-only,transfer,galerkin-reg]", "--set", "lams=[0.01]",
            "--set", "model.width1=4", "--set", "model.width2=4", "--out", "run"]


def test_coarse_to_fine_output_fits_80_columns(tmp_path, run_cli, small_npz, columns80):
    code, out, err = run_cli(tmp_path, *c2f_args(small_npz))
    assert code == 0, err
    check_80(out)
    check_80(err)  # the progress lines
    first = out.splitlines()[0]
    assert first.startswith("no --recipe: defaults + --set"), first
    assert "→ cnn on npz, grids 8 → 16" in out
    assert "galerkin-reg(lam=0.01)" in out and "[t0 galerkin-reg(lam=0.01) 16] epoch 1/1" in err
    # the footnote is a left-aligned paragraph (not a centred caption), broken between its items
    assert re.search(r"^start: right after the transfer; epoch 1: after the first fine epoch", out, re.M), out
    assert re.search(r"^div/col: diverged / collapsed trials", out, re.M), out
    # seconds below 1 keep their decimals: this run trains in well under a second per variant
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    tt = summary["time_to_accuracy"]["variants"]
    assert any(lv["mean_seconds"] is not None and lv["mean_seconds"] < 1 for lvs in tt.values() for lv in lvs)
    assert not re.search(r"(?<![\d.])0 s\b", out), out
    assert re.search(r"\b0\.\d+ s \(\d+\.\d\d×\)", out), out
    code, again, err = run_cli(tmp_path, "report", "run")  # the same tables from summary.json
    assert code == 0, err
    check_80(again)
    code, cmp_out, err = run_cli(tmp_path, "compare", "run", "run")  # the compare table (a run against itself)
    assert code == 0, err
    check_80(cmp_out)
    assert "galerkin-" in cmp_out and "vs first run" in cmp_out
    html = (tmp_path / "run" / "report.html").read_text()
    assert not re.search(r"(?<![\w*])\*[A-Za-z][^*<>]*\*(?![\w*])", html), "literal *emphasis* in the HTML"
    assert "<em>" in html


def test_train_transfer_and_listings_fit_80_columns(tmp_path, run_cli, small_npz, columns80):
    code, out, err = run_cli(tmp_path, "train", "--set", "dataset.name=npz", "--set", f"dataset.path={small_npz}",
                             "--set", "resolution=16", "--set", "train.epochs=1", "--set", "model.width1=4",
                             "--set", "model.width2=4", "--out", "run")
    assert code == 0, err
    check_80(out)
    check_80(err)
    assert re.search(r"wall time \d+\.\d+ s", out), out  # sub-second: decimals kept
    code, out, err = run_cli(tmp_path, "transfer", "run/checkpoints/last.pt", "--to", "fine", "--strategy",
                             "galerkin-reg", "--out", "fine.pt", "--samples", "0")
    assert code == 0, err
    check_80(out)
    assert "classifier.weight" in out and "conv1.weight" in out
    for cmd in (["datasets"], ["recipes"], ["params"]):
        code, out, err = run_cli(tmp_path, *cmd)
        assert code == 0, err
        check_80(out)


# ------------------------------------------------------------------ the HTML report

def test_html_renders_markdown_marks_and_keeps_mean_std_together():
    sections = [
        ("h1", "Report: `cnn` on *synthetic*"),
        ("p", "It answers *did coarse training save time?* and **One trial: an anecdote** — "
              "see `figures/*.png`; * marks p < 0.05; <script>x</script> & co."),
        ("table", ["strategy", "final: test", "95 % CI"],
         [["galerkin-reg(lam=0.1)", "70.8 ± 3.6*", "68.1–73.2"], ["*kept*", "**2/3**", "—"]]),
    ]
    h = _render_html(sections, "t")
    assert "<em>did coarse training save time?</em>" in h and "<em>synthetic</em>" in h
    assert "<strong>One trial: an anecdote</strong>" in h and "<strong>2/3</strong>" in h
    assert "<code>figures/*.png</code>" in h and "<code>cnn</code>" in h  # no marks inside code
    assert "* marks p &lt; 0.05" in h  # a lone star stays a star
    assert "&lt;script&gt;" in h and "<script>" not in h and "&amp; co." in h
    assert not re.search(r"(?<![\w*])\*[A-Za-z][^*<>]*\*(?![\w*])", h)
    assert "70.8&nbsp;±&nbsp;3.6*" in h and " ± " not in h
    assert "<td class='num'>70.8&nbsp;±&nbsp;3.6*</td>" in h and "<td class='num'>68.1–73.2</td>" in h
    assert "td.num,td:first-child{white-space:nowrap}" in h  # numbers and row names never wrap
    assert "<td>galerkin-reg(lam=0.1)</td>" in h
