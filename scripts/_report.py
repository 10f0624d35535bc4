"""Shared by the benchmark scripts: print a markdown report and keep it with its raw rows."""

from __future__ import annotations

import json
import os


def write_report(out_dir: str, stem: str, text: str, rows) -> None:
    """Prints ``text`` and writes ``{out_dir}/{stem}.md`` and ``{out_dir}/{stem}.json`` (``rows``)."""
    print(text)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with open(os.path.join(out_dir, f"{stem}.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
