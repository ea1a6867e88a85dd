"""The documented compliance CSV: the example file imports, and the README lists what the
importer accepts (column names and status words), so the two cannot drift apart."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from actions.compliance_csv import COLUMNS, STATUS_WORDS

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "compliance.csv"


def readme_csv_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("- **Compliance CSV**")
    return text[start : text.index("- **What to grant**", start)]


def test_the_example_file_imports(tmp_path: Path) -> None:
    subprocess.run(  # a tenant that exists: importing for an unknown one is refused
        [sys.executable, "-m", "driftline.cli", "tokens", "create", "--tenant", "acme",
         "--data", str(tmp_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "mdm", "import", str(EXAMPLE), "--vendor", "jamf",
         "--tenant", "acme", "--data", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "imported 3 jamf compliance records for acme" in result.stdout


def test_the_readme_lists_every_accepted_name_and_word() -> None:
    section = readme_csv_section()
    documented = set(re.findall(r"`([^`]+)`", section))
    for names in COLUMNS.values():
        assert set(names) <= documented, set(names) - documented
    assert {word for word in STATUS_WORDS if word} <= documented
    assert "examples/compliance.csv" in section
