"""Write the tables of a full ``trajwatch bench --json`` run into the README and the docs.

The README's "Performance" section gets the machine, the rows that have a target and
the tally; ``docs/benchmarks.md`` gets the headline reproduction and the whole table.
Each goes between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers; the text
around them (what the figures mean, why a target is missed) is written by hand.

    trajwatch bench --json bench.json
    python scripts/update_performance.py bench.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from trajwatch.bench import format_markdown

ROOT = Path(__file__).resolve().parents[1]


def machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    v = m["versions"]
    load = m.get("load_average_start", [float("nan")])[0]
    return (
        f"Measured {m['date'][:10]} on {m['cpu']}, {m['cores']} cores shared with other "
        f"work (load average {load:.1f} at the start), Python {m['python']}, NumPy "
        f"{v['numpy']}, Numba {v['numba']}, PyTorch {v['torch']}, pyzmq {v['pyzmq']} "
        f"(libzmq {v['libzmq']}), commit `{m['commit']}`; the whole suite took "
        f"{result['seconds'] / 60:.0f} minutes."
    )


def tally(rows: list[dict[str, Any]]) -> str:
    verdicts = [r["pass"] for r in rows if r.get("pass") is not None]
    return f"{sum(verdicts)} of {len(verdicts)} targets met."


def headline_table(result: dict[str, Any]) -> str:
    h = result["benchmarks"]["headline"]["result"]
    tw, study, paper = h["trajwatch"], h["study_pipeline"], h["study_paper"]
    bound = " (lower bound)" if tw["ratio_is_lower_bound"] else ""
    return "\n".join([
        f"{h['system']}; {h['trusted_runs']} trusted runs of {h['frames_per_run']} frames; "
        f"wrong potential: {h['wrong_potential']}.",
        "",
        "| | anomaly rate, held-out trusted run | anomaly rate, wrong potential | ratio |",
        "|---|---|---|---|",
        f"| trajwatch, reference mode (per frame) | {tw['reference']['rate']:.2%} | "
        f"{tw['wrong']['rate']:.1%} | {tw['ratio']:,.0f}{bound} |",
        f"| the study's batch pipeline, same runs (per window) | "
        f"{study['reference_rate']:.1%} | {study['wrong_rate']:.1%} | {study['ratio']:.1f} |",
        f"| the study, published (AIMD vs MLFF) | {paper['reference_rate']:.1%} | | "
        f"{paper['ratio']} |",
    ])  # fmt: skip


def replace_between(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no <!-- {name}:start --> ... <!-- {name}:end --> markers")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("json", type=Path, help="the output of trajwatch bench --json")
    args = parser.parse_args(argv)
    result = json.loads(args.json.read_text())
    if result.get("quick"):
        raise SystemExit("a --quick run: the README shows the full suite's figures")
    rows = result["rows"]
    targeted = [r for r in rows if r.get("pass") is not None]
    readme = ROOT / "README.md"
    text = replace_between(
        readme.read_text(),
        "performance",
        f"{machine_line(result)} {tally(rows)}\n\n{format_markdown(targeted)}\n",
    )
    readme.write_text(text)
    docs = ROOT / "docs" / "benchmarks.md"
    text = replace_between(docs.read_text(), "headline", headline_table(result) + "\n")
    text = replace_between(
        text,
        "results",
        f"{machine_line(result)} {tally(rows)}\n\n{format_markdown(rows)}\n",
    )
    docs.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
