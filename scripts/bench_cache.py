#!/usr/bin/env python
"""What checking a disk cache costs: content keys and checksums against the stat-only baseline.

    python scripts/bench_cache.py [--folder DIR] [--size 128]

In one invocation, on the same split: decodes it into a fresh disk cache (``decode_all``,
the build), then times, each against its baseline,
* the key: hashing every file's bytes (``Samples.fingerprint``) vs stat()-ing them (the old key);
* the reuse: ``open_cached`` (record, header, size, SHA-1 of the data) vs a bare ``np.load`` map.
Prints seconds and ratios, and each check's share of the build time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_of(rounds: int, action) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--folder", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-small")
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import numpy as np

    from cnnzoo.config import load_config
    from cnnzoo.console import console
    from cnnzoo.data.cache import decode_all, open_cached
    from cnnzoo.data.sources import load_data
    from cnnzoo.runtime.device import cpu_count

    with console.scoped(True):  # the data's own lines are training's, not this benchmark's
        spec = load_data(load_config({"data": {"root": args.folder, "image_size": args.size}}))
    split, shape = spec.train, (len(spec.train), spec.channels, args.size, args.size)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        built = decode_all(
            split, (args.size, args.size), spec.channels, kind="disk", cache_dir=Path(folder), workers=cpu_count()
        )
        build = time.perf_counter() - start
        path = Path(built.location)
        del built

        def stat_key() -> None:
            h = hashlib.sha1()
            for p in split.paths:
                st = os.stat(p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode())

        def content_key() -> None:
            split._fingerprint = None  # no memo: what a new run pays
            split.fingerprint()

        stat_s, content_s = best_of(args.rounds, stat_key), best_of(args.rounds, content_key)
        bare_s = best_of(args.rounds, lambda: np.load(path, mmap_mode="c"))
        checked_s = best_of(args.rounds, lambda: open_cached(path, shape, np.uint8))
    size_mb = np.prod(shape) / 2**20
    print(f"{len(split)} images, {size_mb:.0f} MB cache at {args.size}x{args.size}; build (decode) {build:.2f} s")
    print(
        f"  key    stat-only {stat_s:.3f} s   content {content_s:.3f} s   ratio content/stat: "
        f"{content_s / stat_s:.1f}x   ({100 * content_s / build:.1f}% of the build)"
    )
    print(
        f"  reuse  bare map  {bare_s:.4f} s   checked {checked_s:.3f} s   ratio checked/bare: "
        f"{checked_s / bare_s:.0f}x   ({100 * checked_s / build:.1f}% of the build, "
        f"{size_mb / checked_s:.0f} MB/s)"
    )


if __name__ == "__main__":
    main()
