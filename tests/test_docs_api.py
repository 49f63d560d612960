"""docs/api.md runs as written: its Python blocks, top to bottom, in one fresh process."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_page_examples_run_as_written(tmp_path):
    page = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) >= 4, "docs/api.md lost its examples"
    script = tmp_path / "api_examples.py"
    script.write_text("\n\n".join(blocks))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = tmp_path / "runs" / "c2f_api" / "summary.json"
    assert summary.exists()
    # the last block prints one line per strategy of the job
    assert {line.split()[0] for line in r.stdout.splitlines() if line.strip()} >= {"fresh", "transfer", "galerkin"}
