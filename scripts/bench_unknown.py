#!/usr/bin/env python
"""The "unknown" answer measured: AUROC and FPR95 per out-of-distribution score, two classes held out.

    CNNZOO_HOME=... CNNZOO_OFFLINE=1 python scripts/bench_unknown.py [--data clothing-small] \
        [--held-out hat,skirt] [--run RUN_FOLDER] [--out /tmp/bench-unknown] [--set k=v ...]

1. Writes ``OUT/known.csv``: a Kaggle-style CSV of DATA's train/ and validation/ images less the
   held-out classes, the images referenced where they are (nothing copied), and
   ``OUT/unknown.csv``: the held-out classes' photos (validation/ and train/).
2. Trains ``configs/clothing_transfer.yaml`` on it (``cnnzoo train``, in OUT), unless ``--run``
   names a finished run folder.
3. Scores, on the fine-tuned model and on frozen EfficientNet-Lite0 features with a logistic head
   (the baseline: no fine-tuning), every score of :mod:`cnnzoo.inference.unknown` plus
   Mahalanobis: fitted on the training images, known = validation images of the kept classes,
   unknown = the held-out classes' photos. Prints AUROC and FPR95 per score.
4. Runs ``cnnzoo evaluate best.pt --unknown OUT/unknown.csv --json`` and prints its unknown_* keys
   (the score the run stored at the end of training).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def write_csvs(data: Path, held_out: set[str], out: Path) -> tuple[Path, Path]:
    known, unknown = [], []
    for split in ("train", "validation"):
        for label in sorted(os.listdir(data / split)):
            for name in sorted(os.listdir(data / split / label)):
                row = (str(data / split / label / name), label, split)
                (unknown if label in held_out else known).append(row)
    paths = out / "known.csv", out / "unknown.csv"
    for path, rows in zip(paths, (known, unknown)):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "label", "split"])
            writer.writerows(rows)
    return paths


def train(known_csv: Path, out: Path, overrides: list[str]) -> Path:
    config = ROOT / "configs" / "clothing_transfer.yaml"
    cmd = ["cnnzoo", "train", "-c", str(config), "--data", str(known_csv)]
    for item in overrides:
        cmd += ["--set", item]
    subprocess.run(cmd, cwd=out, check=True)
    return (out / "runs" / "latest").resolve()


def rows(csv_path: Path) -> list[tuple[str, str, str]]:
    with open(csv_path) as f:
        return [(r["image"], r["label"], r["split"]) for r in csv.DictReader(f)]


def run_network(model, paths: list[str], parts) -> list[np.ndarray]:
    """Each of ``parts`` (callables on a normalised batch) stacked over the images."""
    import torch

    from cnnzoo.runtime.device import to_model_input

    answers: list[list[np.ndarray]] = [[] for _ in parts]
    with torch.inference_mode():
        for _, pixels in model.batches(paths, batch_size=64, progress=True, task="features"):
            images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
            x = to_model_input(images, *model.norm, device=model.device, channels_last=model.channels_last)
            for store, part in zip(answers, parts):
                store.append(part(x).float().numpy())
    return [np.concatenate(a) for a in answers]


def table(name: str, fit: dict, known: dict, unknown: dict, k: int) -> list[tuple[str, float, float]]:
    from cnnzoo.inference import unknown as ood

    results = []
    for score in ood.LOGIT_SCORES:
        results.append((score, ood.logit_score(score, known["logits"]), ood.logit_score(score, unknown["logits"])))
    means, precision = ood.mahalanobis_fit(fit["features"], fit["labels"])
    results.append(
        (
            "mahalanobis",
            ood.mahalanobis_score(known["features"], means, precision),
            ood.mahalanobis_score(unknown["features"], means, precision),
        )
    )
    bank = fit["features"] / np.linalg.norm(fit["features"], axis=1, keepdims=True)
    results.append(
        (f"knn (k={k})", ood.knn_score(known["features"], bank, k), ood.knn_score(unknown["features"], bank, k))
    )
    lines = [(f"{name}: {score}", ood.auroc(kn, un), ood.fpr_at_keep(kn, un)) for score, kn, un in results]
    for label, area, fpr in lines:
        print(f"{label:<42} AUROC {area:.3f}   FPR95 {fpr:.3f}", flush=True)
    return lines


def frozen_features(sets: dict, out: Path) -> dict:
    """Frozen EfficientNet-Lite0 features (global average pool of its last stage) of every image, read
    with the transfer config's preprocessing (224x224 squash, mean = std = 0.5); kept in
    OUT/frozen.npz, so ``--frozen-only`` can measure the baseline while the fine-tuning still runs."""
    import torch

    from cnnzoo.data import preprocess
    from cnnzoo.model.backbones import Backbone

    saved = out / "frozen.npz"
    if saved.is_file():
        with np.load(saved) as data:
            return {part: data[part] for part in sets}
    backbone = Backbone("timm/tf_efficientnet_lite0", weights="DEFAULT", freeze=True)
    backbone.load_pretrained()
    backbone.eval()
    found = {}
    with torch.inference_mode():
        for part, items in sets.items():
            batches = []
            for start in range(0, len(items), 64):
                pixels = np.stack([preprocess.load_image(p, (224, 224), 3) for p, _ in items[start : start + 64]])
                x = torch.from_numpy(preprocess.normalize_array(pixels, [0.5] * 3, [0.5] * 3))
                batches.append(backbone(x).mean(dim=(2, 3)).numpy())
                print(f"frozen {part}: {start + len(pixels)}/{len(items)}", flush=True)
            found[part] = np.concatenate(batches)
    np.savez(saved, **found)
    return found


def image_sets(known_csv: Path, unknown_csv: Path) -> tuple[list[str], dict]:
    """(the kept classes, {fit, known, unknown}: (image, class index) pairs)."""
    known_rows = rows(known_csv)
    classes = sorted({label for _, label, _ in known_rows})
    sets = {"fit": [], "known": []}
    for image, label, split in known_rows:
        sets["fit" if split == "train" else "known"].append((image, classes.index(label)))
    sets["unknown"] = [(image, -1) for image, _, _ in rows(unknown_csv)]
    return classes, sets


def baseline(sets: dict, features: dict, k: int) -> None:
    from sklearn.linear_model import LogisticRegression

    frozen = {part: {"features": features[part], "labels": np.array([c for _, c in sets[part]])} for part in sets}
    probe = LogisticRegression(max_iter=2000, C=1.0).fit(frozen["fit"]["features"], frozen["fit"]["labels"])
    for part in frozen:
        frozen[part]["logits"] = probe.decision_function(frozen[part]["features"])
    accuracy = float((frozen["known"]["logits"].argmax(1) == frozen["known"]["labels"]).mean())
    print(f"baseline: logistic head on frozen Lite0 features, accuracy on known validation {accuracy:.3f}")
    table("frozen Lite0 + logistic head (baseline)", frozen["fit"], frozen["known"], frozen["unknown"], k)


def fine_tuned(run: Path, sets: dict, k: int) -> None:
    import torch

    from cnnzoo.inference.torch_models import load_torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_torch(run / "best.pt", device="cpu")
    net = model.module
    tuned = {}
    for part, items in sets.items():
        features, logits = run_network(model, [p for p, _ in items], [net[:-1], net])
        tuned[part] = {"features": features, "logits": logits, "labels": np.array([c for _, c in items])}
    accuracy = float((tuned["known"]["logits"].argmax(1) == tuned["known"]["labels"]).mean())
    print(f"fine-tuned {run}: accuracy on known validation {accuracy:.3f}")
    table("fine-tuned clothing_transfer", tuned["fit"], tuned["known"], tuned["unknown"], k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/shared/datasets/clothing-small")
    parser.add_argument("--held-out", default="hat,skirt")
    parser.add_argument("--run", help="a finished run folder trained on OUT/known.csv (skips training)")
    parser.add_argument("--out", default="/tmp/bench-unknown")
    parser.add_argument("--k", type=int, default=10, help="the benchmark's kNN neighbour")
    parser.add_argument("--frozen-only", action="store_true", help="measure the baseline only (no training)")
    parser.add_argument("--set", action="append", default=[], help="training override key=value")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held_out = set(args.held_out.split(","))
    known_csv, unknown_csv = write_csvs(Path(args.data), held_out, out)
    classes, sets = image_sets(known_csv, unknown_csv)
    print(f"held out {sorted(held_out)}: " + ", ".join(f"{part} {len(items)}" for part, items in sets.items()))
    baseline(sets, frozen_features(sets, out), args.k)
    if args.frozen_only:
        return
    run = Path(args.run) if args.run else train(known_csv, out, args.set)
    fine_tuned(run, sets, args.k)
    done = subprocess.run(
        ["cnnzoo", "evaluate", str(run / "best.pt"), "--unknown", str(unknown_csv), "--json", "--no-report"],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        print(f"cnnzoo evaluate --unknown: {done.stderr.strip()}")
    else:
        report = json.loads(done.stdout)
        print("cnnzoo evaluate --unknown:", {k: v for k, v in report.items() if k.startswith("unknown")})


if __name__ == "__main__":
    main()
