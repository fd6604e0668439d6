"""docs/configuration.md agrees with the settings registry: its Settings table is generated from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ledger.config import SETTINGS, settings_table_markdown

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"
HEADER = "| Key | Environment | Flag | Default | Accepted forms | Meaning |"
REGENERATE = (
    "docs/configuration.md's Settings table differs from ledger.config.SETTINGS: regenerate it with "
    "`python -m ledger.config --markdown` and paste the output over the table"
)


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def table_in_doc() -> str:
    """The Markdown table that starts at HEADER, up to the first line that is not a table row."""
    lines = doc_text().splitlines()
    assert lines.count(HEADER) == 1, f"docs/configuration.md needs exactly one table headed {HEADER!r}"
    start = lines.index(HEADER)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end]) + "\n"


def test_settings_table_in_the_docs_is_the_generated_one() -> None:
    assert table_in_doc() == settings_table_markdown(), REGENERATE


def test_generated_table_has_a_row_per_setting_naming_every_environment_name() -> None:
    rows = settings_table_markdown().splitlines()[2:]
    assert len(rows) == len(SETTINGS)
    for row, setting in zip(rows, SETTINGS, strict=True):
        assert row.startswith(f"| `{setting.key}` | "), setting.key
        for name in setting.env:
            assert f"`{name}`" in row, name
        assert setting.forms in row, setting.key


def test_generated_table_marks_secrets_and_url_settings() -> None:
    rows = {row.split(" | ")[0]: row for row in settings_table_markdown().splitlines()[2:]}
    assert "**Secret:** shown as `***`." in rows["| `nats_password`"]
    assert "**Secret:** shown as `***`." in rows["| `nats_token`"]
    assert "A password or token in the URL is shown as `***`." in rows["| `database_url`"]
    assert "| `--database-url` |" in rows["| `database_url`"]
    assert "| — |" in rows["| `oversub_cpu`"]


def test_python_m_ledger_config_markdown_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ledger.config", "--markdown"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == settings_table_markdown()


def test_docs_mention_no_removed_setting_and_the_short_mask() -> None:
    text = doc_text()
    for gone in ("upload_burst_multiplier", "download_burst_multiplier", "UPLOAD_BURST", "DOWNLOAD_BURST"):
        assert gone not in text
    assert "******" not in text
