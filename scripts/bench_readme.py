"""Run the full benchmark matrix (fastbp.bench) and write its table between the bench markers of README.md and of
docs/benchmarks.md, with the JSON next to it (benchmarks/results/latest.json) and the bar chart
(docs/images/bench.png).

Usage: python scripts/bench_readme.py [--rounds 5] [--min-time 0.2] [--from-json benchmarks/results/latest.json]

The numbers of both tables come only from here (or from ``fastbp bench``): nothing is typed in by hand. The method
is described in docs/benchmarks.md (run the command with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, as there).
"""

import argparse
import json
import pathlib
import re

from fastbp import bench
from fastbp.cli import _positive_float, _positive_int  # the command line's argparse types

ROOT = pathlib.Path(__file__).resolve().parent.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
CHART = ROOT / "docs" / "images" / "bench.png"
#: The files that carry the table, each with the path of the chart relative to it.
TARGETS = {ROOT / "README.md": "docs/images/bench.png", ROOT / "docs" / "benchmarks.md": "images/bench.png"}


def section(results, chart):
    """The text between the markers (markers included): the table, the targets, the chart at path ``chart``."""
    return (
        f"{START}\nMeasured {results['date']} on {results['machine']} "
        f"(`python scripts/bench_readme.py`; raw numbers in `benchmarks/results/latest.json`).\n\n"
        f"{bench.table(results)}\n\n{bench.targets_table(results)}\n\n"
        f"![time per step relative to fastbp]({chart})\n{END}"
    )


def write_section(path, body):
    """Replace the bench section of the file at ``path`` by ``body``."""
    text = path.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path.relative_to(ROOT)} has no {START} ... {END} section")
    path.write_text(pattern.sub(lambda _: body, text))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=_positive_int, default=5)
    parser.add_argument("--min-time", type=_positive_float, default=0.2)
    parser.add_argument(
        "--from-json", help="rewrite the bench sections and the chart from this saved run instead of measuring"
    )
    args = parser.parse_args()
    if args.from_json:
        try:
            results = json.loads(pathlib.Path(args.from_json).read_text())
        except (OSError, ValueError) as err:
            parser.error(f"--from-json {args.from_json}: {err}")
    else:
        results = bench.run(bench.matrix(), rounds=args.rounds, min_time=args.min_time)
        (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
        bench.save_json(results, ROOT / "benchmarks" / "results" / "latest.json")
    CHART.parent.mkdir(parents=True, exist_ok=True)
    bench.plot(results, CHART)
    for path, chart in TARGETS.items():
        write_section(path, section(results, chart))
    print(bench.table(results))
    print(bench.targets_table(results))


if __name__ == "__main__":
    main()
