"""Relay throughput of this working tree beside another git revision, in the same run.

Why: "no slower than before" (issue 12) is a claim about two versions of the code, and on a
shared 2-core machine two runs an hour apart differ by more than most changes. This builds the
base revision in a throw-away git worktree with its own virtualenv, then runs
`bench/relay_throughput.py` for the base and for this tree alternately (`--rounds` times each,
base first), and prints msgs/s and the gateway's CPU per message side by side with the ratio.
Nothing is asserted. The JSON (default `bench/results/compare_revisions.json`) keeps every run.

    .venv/bin/python bench/compare_revisions.py --base f9d79fb [--rounds 2] [--sizes 1KB,20KB,1MB] [--count 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import default_json, machine, print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (("gw-smime", "sign+encrypt"), ("gw-submit", "submission TLS+AUTH"), ("gw-plain", "plain relay"))


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _checkout(rev: str, where: Path) -> Path:
    """The revision in a detached worktree with its own virtualenv (editable install)."""
    _git("worktree", "add", "--detach", str(where), rev)
    subprocess.run([sys.executable, "-m", "venv", str(where / ".venv")], check=True)
    subprocess.run([str(where / ".venv" / "bin" / "pip"), "install", "-q", "-e", ".[test]"], cwd=where, check=True,
                   capture_output=True)
    return where


def _run(tree: Path, sizes: str, out: Path, count: int | None = None) -> dict:
    python = tree / ".venv" / "bin" / "python"
    size = ["--count", str(count), "--paced", "0"] if count else ["--quick"]
    subprocess.run([str(python), "bench/relay_throughput.py", *size, "--no-postfix", "--sizes", sizes,
                    "--json", str(out)], cwd=tree, check=True, capture_output=True, timeout=900)
    return json.loads(out.read_text())


def _figures(document: dict) -> dict[tuple[str, str], tuple[float, float]]:
    """(target, size) → (msgs/s, gateway CPU ms per message) of one relay_throughput run."""
    out = {}
    for run in document["runs"]:
        if run.get("target") in dict(TARGETS) and run.get("complete") and run.get("msgs_s"):
            out[(run["target"], run["size"])] = (run["msgs_s"], run.get("cpu_ms_per_msg_gateway_proc") or 0.0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the git revision to compare with (e.g. a commit before a change)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sizes", default="1KB,20KB,1MB")
    ap.add_argument("--count", type=int, help="messages per size and target (default: relay_throughput's "
                    "--quick counts); with it the paced runs are skipped")
    ap.add_argument("--json", default=default_json("compare_revisions"))
    args = ap.parse_args()
    base_rev = _git("rev-parse", "--short", args.base)
    scratch = Path(tempfile.mkdtemp(prefix="msgw-compare-"))
    base_tree = scratch / "base"
    runs: dict[str, list[dict]] = {"base": [], "this": []}
    try:
        _checkout(base_rev, base_tree)
        for n in range(args.rounds):
            for name, tree in (("base", base_tree), ("this", ROOT)):
                print(f"round {n + 1}: {name}", file=sys.stderr)
                runs[name].append(_run(tree, args.sizes, scratch / f"{name}-{n}.json", args.count))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for target, label in TARGETS:
        for size in args.sizes.split(","):
            base = [f[(target, size)] for f in map(_figures, runs["base"]) if (target, size) in f]
            this = [f[(target, size)] for f in map(_figures, runs["this"]) if (target, size) in f]
            if not base or not this:
                continue
            b_rate, t_rate = statistics.mean(r for r, _ in base), statistics.mean(r for r, _ in this)
            b_cpu, t_cpu = statistics.mean(c for _, c in base), statistics.mean(c for _, c in this)
            rows.append([label, size, b_rate, t_rate, t_rate / b_rate, b_cpu, t_cpu])
    print(f"\nThis tree ({_git('rev-parse', '--short', 'HEAD')} + working tree) beside {base_rev}, "
          f"{args.rounds} alternating round(s), means (msgs/s; gateway CPU ms per message)")
    table = print_table(["target", "size", f"{base_rev} msgs/s", "this msgs/s", "this/base",
                         f"{base_rev} CPU/msg", "this CPU/msg"], rows, digits=2)
    path = write_json(args.json, {"benchmark": "compare_revisions", "base": base_rev, "machine": machine(),
                                  "rounds": args.rounds, "runs": runs, "tables": [table]})
    return 0 if path.exists() else 1


if __name__ == "__main__":
    raise SystemExit(main())
