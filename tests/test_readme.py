"""The README's configuration table: one Markdown table that names every option of --help."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def configuration_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]


def test_configuration_table_is_one_table_naming_every_option() -> None:
    lines = configuration_section().splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("|")]
    # a blank (or any other) line inside the table ends it: the rest renders as a paragraph
    assert rows == list(range(rows[0], rows[-1] + 1)), "the configuration table is broken up"
    assert lines[rows[1]].startswith("|---")
    documented = [
        flag
        for line in (lines[i] for i in rows[2:])
        for flag in re.findall(r"`(--[\w*-]+)", line.split("|")[1])
    ]
    assert documented
    done = subprocess.run(
        [sys.executable, "-m", "server", "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    options = set(re.findall(r"(?<![\w-])(--[a-z][\w-]+)", done.stdout)) - {"--help"}
    assert len(options) > 20
    missing = [o for o in options if not any(fnmatch.fnmatch(o, d) for d in documented)]
    assert sorted(missing) == []
