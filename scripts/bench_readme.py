"""Run the full benchmark matrix (fastbp.bench) and write its table into README.md between the bench markers,
with the JSON next to it (benchmarks/results/latest.json) and the bar chart (docs/bench.png).

Usage: python scripts/bench_readme.py [--rounds 5] [--min-time 0.2] [--from-json benchmarks/results/latest.json]

The README's numbers come only from here (or from ``fastbp bench``): nothing is typed in by hand.
"""

import argparse
import json
import pathlib
import re

from fastbp import bench

ROOT = pathlib.Path(__file__).resolve().parent.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument(
        "--from-json", help="rewrite the README section and the chart from this saved run instead of measuring"
    )
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(pathlib.Path(args.from_json).read_text())
    else:
        results = bench.run(bench.MATRIX, rounds=args.rounds, min_time=args.min_time)
        (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
        bench.save_json(results, ROOT / "benchmarks" / "results" / "latest.json")
    (ROOT / "docs").mkdir(exist_ok=True)
    bench.plot(results, ROOT / "docs" / "bench.png")
    body = (
        f"{START}\nMeasured {results['date']} on {results['machine']} "
        f"(`python scripts/bench_readme.py`; raw numbers in `benchmarks/results/latest.json`).\n\n"
        f"{bench.table(results)}\n\n{bench.targets_table(results)}\n\n"
        f"![time per step relative to fastbp](docs/bench.png)\n{END}"
    )
    readme = (ROOT / "README.md").read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no {START} ... {END} section")
    (ROOT / "README.md").write_text(pattern.sub(lambda _: body, readme))
    print(bench.table(results))
    print(bench.targets_table(results))


if __name__ == "__main__":
    main()
