#!/usr/bin/env python
"""How fast a config mistake comes back, against the time to import torch.

    python scripts/bench_errors.py [--repeat 5]

Times, in alternating rounds in one invocation (the best of each counts):

  typo       cnnzoo train --config <a config with an unknown key>   (exit 2, one line)
  summary    cnnzoo summary --config <the same config>
  torch      python -c "import torch"

and prints the ratios typo/torch and summary/torch; issue #9 asks for <= 0.3x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wall(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cnnzoo = shutil.which("cnnzoo") or str(Path(sys.executable).with_name("cnnzoo"))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "typo.yaml"
        config.write_text(
            "data: {source: shapes}\nmodel: {layers: [flatten, {dense: {out_features: 5}}]}\ntrain: {epoch: 3}\n"
        )
        commands = {
            "typo": [cnnzoo, "train", "--config", str(config), "--runs", os.path.join(tmp, "runs")],
            "summary": [cnnzoo, "summary", "--config", str(config)],
            "torch": [sys.executable, "-c", "import torch"],
        }
        best = {name: float("inf") for name in commands}
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                seconds, proc = wall(cmd)
                if name != "torch" and (proc.returncode != 2 or "train.epoch: unknown key" not in proc.stderr):
                    sys.exit(f"{name}: expected exit 2 and the unknown-key line, got {proc.returncode}: {proc.stderr}")
                best[name] = min(best[name], seconds)
    for name, seconds in best.items():
        print(f"  {name:<8} {seconds:6.3f} s  (best of {args.repeat})")
    for name in ("typo", "summary"):
        print(f"ratio {name}/torch: {best[name] / best['torch']:.2f}x (target <= 0.3x)")


if __name__ == "__main__":
    main()
