#!/usr/bin/env python
"""The "unknown" answer measured: AUROC and FPR95 per out-of-distribution score, two classes held out.

    CNNZOO_HOME=... CNNZOO_OFFLINE=1 python scripts/bench_unknown.py [--data clothing-small] \
        [--held-out hat,skirt] [--run RUN_FOLDER] [--out /tmp/bench-unknown] [--set k=v ...]

1. Writes ``OUT/known.csv``: a Kaggle-style CSV of DATA's train/ and validation/ images less the
   held-out classes, the images referenced where they are (nothing copied), and
   ``OUT/unknown.csv``: the held-out classes' photos (validation/ and train/).
2. Trains ``configs/clothing_transfer.yaml`` on it (``cnnzoo train``, in OUT), unless ``--run``
   names a finished run folder.
3. Runs ``cnnzoo evaluate best.pt --unknown OUT/unknown.csv --json`` and prints its unknown_* keys
   (the score the run stored at the end of training; known = the validation images of the kept classes).
4. Scores, on the fine-tuned model (the kNN reference: the training features best.pt stores) and
   on frozen EfficientNet-Lite0 features with a logistic head (the baseline: no fine-tuning;
   fitted on every n-th training image, ``--fit-images``), every score of
   :mod:`cnnzoo.inference.unknown` plus Mahalanobis (the baseline only: it needs labelled
   features), known = validation images of the kept classes, unknown = the held-out classes'
   photos. Prints AUROC and FPR95 per score.
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


def refit(run: Path) -> None:
    """Fit the unknown score on a run whose best.pt has none (a run stopped before its end): the run
    is opened as ``--resume`` opens it, then fitted as training fits it at its end."""
    from cnnzoo.checkpoint import load_checkpoint
    from cnnzoo.training.run import prepare
    from cnnzoo.training.unknown_fit import fit_unknown

    if "unknown" in load_checkpoint(run / "best.pt")["meta"]:
        return
    job = prepare(None, [], out=run.parent, resume=run / "last.pt")
    fit_unknown(run, job.stages, settings=job.cfg.train.unknown, multi_label=job.multi_label)


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


def figures(name: str, known: np.ndarray, strange: np.ndarray) -> None:
    from cnnzoo.inference import unknown as ood

    print(f"{name:<52} AUROC {ood.auroc(known, strange):.3f}   FPR95 {ood.fpr_at_keep(known, strange):.3f}", flush=True)


def scores_table(label: str, fit: dict, known: dict, strange: dict, ks: list[int]) -> None:
    """AUROC and FPR95 of every score; ``fit`` holds the reference features (and labels, for Mahalanobis)."""
    from cnnzoo.inference import unknown as ood

    for score in ood.LOGIT_SCORES:
        figures(f"{label}: {score}", ood.logit_score(score, known["logits"]), ood.logit_score(score, strange["logits"]))
    if "labels" in fit:
        means, precision = ood.mahalanobis_fit(fit["features"], fit["labels"])
        figures(
            f"{label}: mahalanobis",
            ood.mahalanobis_score(known["features"], means, precision),
            ood.mahalanobis_score(strange["features"], means, precision),
        )
    bank = fit["features"] / np.linalg.norm(fit["features"], axis=1, keepdims=True)
    for k in ks:
        figures(
            f"{label}: knn (k={k}, {len(bank)} images)",
            ood.knn_score(known["features"], bank, k),
            ood.knn_score(strange["features"], bank, k),
        )


def frozen_features(sets: dict, out: Path) -> dict:
    """Frozen EfficientNet-Lite0 features (global average pool of its last stage) of every image, read
    with the transfer config's preprocessing (224x224 squash, mean = std = 0.5); kept in OUT/frozen.npz."""
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
            for start in range(0, len(items), 32):
                pixels = np.stack([preprocess.load_image(p, (224, 224), 3) for p, _ in items[start : start + 32]])
                x = torch.from_numpy(preprocess.normalize_array(pixels, [0.5] * 3, [0.5] * 3))
                batches.append(backbone(x).mean(dim=(2, 3)).numpy())
            found[part] = np.concatenate(batches)
            print(f"frozen Lite0 features: {part} {len(items)} images", flush=True)
    np.savez(saved, **found)
    return found


def image_sets(known_csv: Path, unknown_csv: Path, fit_images: int) -> dict:
    """{fit, known, unknown}: (image, class index) pairs; ``fit``: every n-th training image."""
    known_rows = rows(known_csv)
    classes = sorted({label for _, label, _ in known_rows})
    train = [(image, classes.index(label)) for image, label, split in known_rows if split == "train"]
    step = max(1, len(train) // fit_images)
    return {
        "fit": train[::step][:fit_images],
        "known": [(image, classes.index(label)) for image, label, split in known_rows if split == "validation"],
        "unknown": [(image, -1) for image, _, _ in rows(unknown_csv)],
    }


def baseline(sets: dict, features: dict, ks: list[int]) -> None:
    from sklearn.linear_model import LogisticRegression

    parts = {part: {"features": features[part], "labels": np.array([c for _, c in sets[part]])} for part in sets}
    probe = LogisticRegression(max_iter=3000).fit(parts["fit"]["features"], parts["fit"]["labels"])
    for part in parts.values():
        part["logits"] = probe.decision_function(part["features"])
    accuracy = float((parts["known"]["logits"].argmax(1) == parts["known"]["labels"]).mean())
    print(f"baseline: logistic head on frozen Lite0 features of {len(sets['fit'])} training images, "
          f"accuracy on known validation {accuracy:.3f}")  # fmt: skip
    scores_table("frozen Lite0 (baseline)", parts["fit"], parts["known"], parts["unknown"], ks)


def fine_tuned(run: Path, sets: dict, ks: list[int]) -> None:
    """The fine-tuned network's scores; the kNN reference is the bank best.pt stores (its training features)."""
    import torch

    from cnnzoo.checkpoint import load_checkpoint
    from cnnzoo.inference.torch_models import load_torch

    model = load_torch(run / "best.pt", device="cpu")
    net = model.module
    tuned = {}
    for part in ("known", "unknown"):
        features, logits = run_network(model, [p for p, _ in sets[part]], [net[:-1], net])
        tuned[part] = {"features": features, "logits": logits, "labels": np.array([c for _, c in sets[part]])}
    accuracy = float((tuned["known"]["logits"].argmax(1) == tuned["known"]["labels"]).mean())
    print(f"fine-tuned {run}: accuracy on known validation {accuracy:.3f}")
    bank = load_checkpoint(run / "best.pt")["unknown_bank"]
    assert isinstance(bank, torch.Tensor)
    scores_table("fine-tuned", {"features": bank.numpy()}, tuned["known"], tuned["unknown"], ks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/shared/datasets/clothing-small")
    parser.add_argument("--held-out", default="hat,skirt")
    parser.add_argument("--run", help="a finished run folder trained on OUT/known.csv (skips training)")
    parser.add_argument("--out", default="/tmp/bench-unknown")
    parser.add_argument("--fit-images", type=int, default=800, help="training images the baseline is fitted on")
    parser.add_argument("--k", default="1,10,50", help="the kNN neighbours measured")
    parser.add_argument("--set", action="append", default=[], help="training override key=value")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held_out = set(args.held_out.split(","))
    ks = [int(k) for k in args.k.split(",")]
    known_csv, unknown_csv = write_csvs(Path(args.data), held_out, out)
    sets = image_sets(known_csv, unknown_csv, args.fit_images)
    print(f"held out {sorted(held_out)}: " + ", ".join(f"{part} {len(items)}" for part, items in sets.items()))
    run = Path(args.run) if args.run else train(known_csv, out, args.set)
    refit(run)
    done = subprocess.run(
        ["cnnzoo", "evaluate", str(run / "best.pt"), "--unknown", str(unknown_csv), "--json", "--no-report",
         "--out", str(out / "eval")],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        print(f"cnnzoo evaluate --unknown: {done.stderr.strip()}")
    else:
        report = json.loads(done.stdout)
        print("cnnzoo evaluate --unknown:", {k: v for k, v in report.items() if k.startswith("unknown")}, flush=True)
    fine_tuned(run, sets, ks)
    baseline(sets, frozen_features(sets, out), ks)


if __name__ == "__main__":
    main()
