"""How every ``authz`` command's ``--help`` reads: plain text (no reStructuredText markup) and a
closing "exit codes" section, the same for each command whatever module builds its parser."""

from __future__ import annotations

import argparse
import re
from typing import Any

# Nothing parsed the arguments (argparse's own status for a bad command line).
USAGE_ERROR = "2  the command line is wrong (usage printed)"


def plain(text: str | None) -> str:
    """A docstring as help text: ``literal`` becomes literal, the first paragraph only."""
    first = (text or "").strip().split("\n\n", 1)[0]
    return re.sub(r"``([^`]+)``", r"\1", " ".join(first.split()))


def exit_codes(*codes: str) -> dict[str, Any]:
    """Keyword arguments for an ArgumentParser (or add_parser) whose help ends with its exit
    codes; each code is "N  meaning"."""
    return {"epilog": "exit codes:\n" + "\n".join(f"  {c}" for c in codes),
            "formatter_class": argparse.RawDescriptionHelpFormatter}
