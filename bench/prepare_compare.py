"""One message's preparation, CPU µs per message, of this tree beside another revision, same run.

Why: the preparation stage (legacy detection, S/MIME classification, outer headers, the build of
each copy) is a few hundred µs, and on the shared 2-core machine two runs minutes apart differ by
more than a change saves. This extracts the base revision (`git archive`, a temp folder: no
worktree, no virtualenv: this tree's venv runs both, each tree first on `sys.path`) and runs
`bench/pipeline_parse.py` of each tree alternately, `--rounds` times, base first; it prints the
median CPU µs per message (all threads) and the `email` parse count per size, side by side with
the ratio. No thresholds, no asserts.

    .venv/bin/python bench/prepare_compare.py [--base main] [--rounds 5] [--count 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("1KB", "20KB", "20KB-8bit")


def _extract(rev: str, where: Path) -> Path:
    """The files of `rev` in `where` (what `pipeline_parse.py` imports: gateway, bench, tests)."""
    archive = subprocess.run(["git", "archive", rev, "gateway", "bench", "tests"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    return where


def _run(tree: Path, count: int, out: Path) -> dict[str, dict[str, float]]:
    subprocess.run([sys.executable, str(tree / "bench" / "pipeline_parse.py"), "--count", str(count),
                    "--json", str(out)], cwd=tree, check=True, capture_output=True, timeout=600,
                   env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="main")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "prepare_compare.json"))
    args = ap.parse_args(argv)
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"base": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="msgw-bench-prepare-") as tmp:
        trees = {"base": _extract(args.base, Path(tmp) / "base"), "this": ROOT}
        for n in range(args.rounds):
            for label, tree in trees.items():
                runs[label].append(_run(tree, args.count, Path(tmp) / f"{label}{n}.json"))
                print(f"round {n + 1}/{args.rounds} {label}: " + ", ".join(
                    f"{size} {runs[label][-1][size]['pipeline_cpu_us']:.0f}" for size in SIZES), flush=True)
    print(f"\nCPU us per message ({args.rounds} alternating rounds of {args.count}: median, and the least, which "
          f"other load inflates least), base = {args.base}")
    print(f"{'size':>10} | {'base us':>8} | {'this us':>8} | {'this/base':>9} | {'base min':>8} | {'this min':>8} | "
          f"{'this/base':>9} | {'base parses':>11} | {'this parses':>11}")
    table = {}
    for size in SIZES:
        base = statistics.median(r[size]["pipeline_cpu_us"] for r in runs["base"])
        this = statistics.median(r[size]["pipeline_cpu_us"] for r in runs["this"])
        least = (min(r[size]["pipeline_cpu_us"] for r in runs["base"]),
                 min(r[size]["pipeline_cpu_us"] for r in runs["this"]))
        parses = (runs["base"][0][size]["parses"], runs["this"][0][size]["parses"])
        table[size] = {"base_us": base, "this_us": this, "ratio": this / base, "base_min_us": least[0],
                       "this_min_us": least[1], "base_parses": parses[0], "this_parses": parses[1]}
        print(f"{size:>10} | {base:8.0f} | {this:8.0f} | {this / base:9.2f} | {least[0]:8.0f} | {least[1]:8.0f} | "
              f"{least[1] / least[0]:9.2f} | {parses[0]:11.0f} | {parses[1]:11.0f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"base": args.base, "table": table, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
