"""The docs cannot drift from the code: every recipe key of the pydantic schema is documented in
docs/recipes.md, and the README and docs link only to files that exist."""
import re
import typing
from pathlib import Path

from pydantic import BaseModel

from mres.recipe import CoarseToFineRecipe, TrainRecipe

ROOT = Path(__file__).resolve().parents[1]


def _blocks(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _blocks(a)]


def schema_keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, bool]]:
    """(dotted key, is a block) for every key a recipe may hold."""
    out = []
    for name, field in model.model_fields.items():
        blocks = _blocks(field.annotation)
        out.append((prefix + name, bool(blocks)))
        for b in blocks:
            out += schema_keys(b, prefix + name + ".")
    return out


def test_every_recipe_key_is_documented():
    doc = (ROOT / "docs" / "recipes.md").read_text()
    rows = [r.split("|")[1] for r in doc.splitlines() if r.startswith("|") and r.count("|") > 2]
    in_tables = {k for cell in rows for k in re.findall(r"`([\w.]+)`", cell)}
    anywhere = set(re.findall(r"`([\w.]+)", doc))
    missing = []
    for kind in (TrainRecipe, CoarseToFineRecipe):
        for key, is_block in schema_keys(kind):
            leaf = key.rsplit(".", 1)[-1]
            if is_block:  # a block: named, or its keys are
                ok = key in anywhere or leaf in anywhere or any(k.startswith(key + ".") for k in anywhere)
            else:  # a row of a table, by its full key or by its name inside its block's table
                ok = key in in_tables or leaf in in_tables or any(k.endswith("." + leaf) for k in in_tables)
            if not ok:
                missing.append(key)
    assert not missing, f"recipe keys missing from docs/recipes.md: {sorted(set(missing))}"


def test_the_check_notices_an_undocumented_key():
    class Extra(BaseModel):
        surely_undocumented_key_xyz: int = 0

    keys = [k for k, _ in schema_keys(Extra)]
    doc = (ROOT / "docs" / "recipes.md").read_text()
    assert keys == ["surely_undocumented_key_xyz"] and keys[0] not in doc


def test_links_point_at_files_that_exist():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
        if re.search(r"DESIGN ?§", page.read_text()) and not (ROOT / "docs" / "design.md").exists():
            broken.append(f"{page.relative_to(ROOT)} cites DESIGN §…, but docs/design.md is not in the repository")
    assert not broken, "\n".join(broken)


def test_readme_is_a_landing_page_and_its_model_example_runs(tmp_path):
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in text  # .ci/run's command
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    script = block + ("\nfrom mres.models import build_model\nimport torch\n"
                      "m = build_model('tiny', {}, 1, 10, 28)\nassert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)\n"
                      "from mres.grids.transfer import transfer_weights\n"
                      "transfer_weights(build_model('tiny', {}, 1, 10, 14), m, 'galerkin')\nprint('ok')\n")
    (tmp_path / "readme_model.py").write_text(script)
    r = subprocess.run([sys.executable, str(tmp_path / "readme_model.py")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
