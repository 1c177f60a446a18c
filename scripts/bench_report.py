#!/usr/bin/env python
"""What report.html costs ``cnnzoo evaluate``: the same evaluation with and without the page.

    python scripts/bench_report.py [--checkpoint runs/latest/best.pt] [--data DIR] [--repeat 3]

In one invocation, alternating so that both see the same machine state: ``cnnzoo.evaluate`` with
``html_report=False`` (the baseline: eval.json and confusion_matrix.png) and with the page; the
median wall time of each over --repeat rounds, their difference (the page's build time) and ratio,
and the page's size. Without --data the checkpoint's own validation (or test) split is scored.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="default: runs/latest's best.pt")
    parser.add_argument("--data", default=None, help="labelled folder (default: the checkpoint's own data)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from cnnzoo.evaluation.evaluate import evaluate

    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as scratch:
        # warm-up: imports and the page cache
        evaluate(args.checkpoint, args.data, out=scratch, progress=False, html_report=False)
        for _ in range(args.repeat):
            for with_page in (False, True):
                start = time.perf_counter()
                report = evaluate(args.checkpoint, args.data, out=scratch, progress=False, html_report=with_page)
                times[with_page].append(time.perf_counter() - start)
        size = (Path(scratch) / "report.html").stat().st_size
    without, with_page = statistics.median(times[False]), statistics.median(times[True])
    print(f"checkpoint {report['checkpoint']} on {report['split']}: {report['num_images']} images")
    print(f"evaluate --no-report   median {without:6.2f} s  ({args.repeat} rounds)")
    print(f"evaluate (report.html) median {with_page:6.2f} s")
    print(f"report.html: +{with_page - without:.2f} s, {with_page / without:.2f}x the evaluation; {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
