"""Writing a benchmark's results: results.json (the numbers) and results.md (the table), then echoing the table."""

from __future__ import annotations

import json
import os


def write_results(out: str, payload: dict, lines: list[str]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(payload, f, indent=2)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}/results.json and results.md")
