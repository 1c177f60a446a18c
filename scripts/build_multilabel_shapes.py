"""Write the multi-label shapes set: images with one to three drawn shapes, tagged with the shapes present.

    python scripts/build_multilabel_shapes.py OUT [--train 1500] [--validation 300] [--size 64]

OUT gets images/ and labels.csv (image,tags,split; tags space-separated); train with
configs/shapes_multilabel.yaml (--data OUT/labels.csv).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnzoo.data.shapes import write_multi_label_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--validation", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    manifest = write_multi_label_shapes(args.out, {"train": args.train, "validation": args.validation}, size=args.size)
    print(f"wrote {args.train + args.validation} images and {manifest}")


if __name__ == "__main__":
    main()
