"""How long each lecture takes to run, as `nbdev-test` runs it (cells flagged `slow` or `cuda` skipped). Run on demand:
`python benchmarks/lecture_times.py [--flags slow] [--only 07 08]`.

Runs the notebooks one at a time (so that one does not slow another down), each in a fresh process with `nbdev-test`, so that
every time includes starting Python and importing torch, as a learner's "Restart kernel and run all" does; prints a table of
seconds per lecture and exits non-zero if any fails or takes longer than `--limit` seconds (default 60, the course's budget
on 2 CPU cores). The numbers quoted in README.md and the index come from this script."""
import argparse, os, subprocess, sys, time
from pathlib import Path

NBS = Path(__file__).resolve().parents[1] / "nbs"


def lecture_times(paths, flags=(), save=False):
    """Run each notebook alone in a fresh process with `nbdev-test`, as CI and a learner's "Restart kernel and run all" do: [(name, seconds, passed)].
    With `save`, each is saved with the outputs of that run (how the committed notebooks are made)."""
    nbdev_test = Path(sys.executable).parent / "nbdev-test"
    rows = []
    for path in paths:
        start = time.perf_counter()
        result = subprocess.run([str(nbdev_test), str(path), *(["--flags", " ".join(flags)] if flags else []), *(["--save"] if save else [])],
                                capture_output=True, text=True)
        rows.append((path.name, time.perf_counter() - start, result.returncode == 0))
        print(f"{path.name:24s} {rows[-1][1]:6.1f} s {'ok' if rows[-1][2] else 'FAILED: ' + result.stderr[-500:]}", file=sys.stderr, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", nargs="*", default=[], help="nbdev test flags to run as well, e.g. slow")
    parser.add_argument("--only", nargs="*", default=None, help="lecture numbers to time, e.g. 07 08 (default: every notebook)")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds a lecture may take")
    parser.add_argument("--save", action="store_true", help="save each notebook with the outputs of its run (as the committed ones are made)")
    parser.add_argument("--notebooks", nargs="*", default=None, help="notebook files to time instead of the course's")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    paths = [Path(p) for p in args.notebooks] if args.notebooks else sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith(("_", ".")))
    if args.only: paths = [p for p in paths if p.name.split("_")[0] in args.only]
    rows = lecture_times(paths, args.flags, args.save)
    print("| notebook | seconds |\n|---|---|")
    for name, seconds, passed in rows: print(f"| {name} | {seconds:.0f}{'' if passed else ' (failed)'} |")
    print(f"| **all {len(rows)}** | **{sum(s for _, s, _ in rows):.0f}** |")
    slow = [name for name, seconds, _ in rows if seconds > args.limit]
    failed = [name for name, _, passed in rows if not passed]
    if slow: print(f"over {args.limit:.0f} s: {', '.join(slow)}", file=sys.stderr)
    if failed: print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if slow or failed else 0


if __name__ == "__main__":
    sys.exit(main())
