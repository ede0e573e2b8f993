"""The committed stubs in orchestrator/_pb are what proto/ generates, and proto rules hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_the_proto_sources() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_every_enum_starts_with_unspecified_and_every_field_has_a_comment() -> None:
    for path in sorted((ROOT / "proto").rglob("*.proto")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            enum = re.match(r"\s*enum (\w+) \{", line)
            if enum:
                first = next(x for x in lines[i + 1 :] if re.match(r"\s*[A-Z_]+ = \d+;", x))
                assert first.strip().endswith("_UNSPECIFIED = 0;"), (path.name, enum.group(1))
            field = re.match(r"\s*(repeated |optional |map<[^>]+> )?[\w.]+ \w+ = \d+;", line)
            value = re.match(r"\s*[A-Z_]+ = \d+;", line)
            if field or value:
                assert lines[i - 1].strip().startswith("//"), f"{path.name}:{i + 1} has no comment"
