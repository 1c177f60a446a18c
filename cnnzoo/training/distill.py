"""Knowledge distillation (``train.distill``): a trained teacher's soft targets beside the labels.

The student's loss is ``(1 - weight) x label loss + weight x T^2 x KL(teacher || student)``, both
sides' logits divided by the temperature T (Hinton et al., 2015); multi-label: a sigmoid per class
on both sides and the Bernoulli KL per class. The teacher is any model :func:`cnnzoo.inference.load`
opens (a checkpoint, loaded weights-only; an ONNX or OpenVINO export): it is asked only for logits
of uint8 images at its own size, and normalises them itself, so a 224 px Lite0 teaches a 64 px
network without either knowing the other's preprocessing.

Two modes (``train.distill.mode``; docs/distillation.md says which costs what):

* ``cached``: the teacher scores every training image once, decoded at its own size from the file
  (and its mirror image); the average of the two views' logits is kept in ``$CNNZOO_HOME/cache``
  keyed by the teacher file's digest and the images, so later runs (and every fold) reuse it. A
  batch looks its images up by their rows; a mixed batch (MixUp/CutMix) gets the two images'
  soft targets blended in the batch's ratio, as its labels are. The teacher does not see the
  crop, colour or erasing the student sees: its answer is for the whole image.
* ``live``: the teacher scores every training batch as the student sees it, augmented and mixed:
  the student's input, un-normalised to uint8, resized to the teacher's size.

``auto`` is cached, unless the images are streamed (shards), whose rows a cache cannot name.

Floor 7 (training): imports torch, :mod:`cnnzoo.config`, :mod:`cnnzoo.console`, the errors, the
cache home, :mod:`cnnzoo.data` (the datasets and the array cache), :mod:`cnnzoo.runtime` and
:mod:`cnnzoo.inference`.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import inference
from ..config import DistillConfig
from ..console import console
from ..data import loaders as loaders_mod
from ..data.cache import cached_array
from ..errors import ConfigError, UserError, short_reason
from ..files import cache_folder
from ..runtime import distributed
from ..runtime.device import cpu_count
from .mixing import blend

KEY = "train.distill.teacher"
CACHE_FORMAT = 1  # bump when what the cached teacher answers hold changes
CACHE_BATCH = 32
NOT_FOUND_HINT = (
    "train the teacher first (e.g. cnnzoo train --config clothing_transfer --data DIR) or name yours with "
    "--set train.distill.teacher=PATH"
)


def file_digest(path: str | Path) -> str:
    """SHA-256 of the teacher's file (and of an OpenVINO .xml's weights, the .bin beside it)."""
    h = hashlib.sha256()
    files = [Path(path)]
    if files[0].suffix.lower() == ".xml" and files[0].with_suffix(".bin").is_file():
        files.append(files[0].with_suffix(".bin"))
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_teacher(path: str, device: str | None = None) -> inference.Classifier:
    """The teacher opened by the generic loader; whatever stops it is one line naming the key."""
    if not Path(path).is_file():
        raise ConfigError(f"{KEY}: {path} not found; {NOT_FOUND_HINT}")
    try:
        return inference.load(path, device=device)
    except UserError as exc:
        raise ConfigError(f"{KEY}: {exc}") from None
    except Exception as exc:  # a foreign file fails in the format's own library, in many types
        raise ConfigError(f"{KEY}: {path} cannot be loaded as a model ({short_reason(exc)})") from None


def class_order(teacher: inference.Classifier, classes: list[str], *, multi_label: bool) -> list[int]:
    """The teacher's output column of each of the data's classes; a teacher of other classes (or of
    the other task) is refused, naming the difference."""
    name = Path(str(teacher.path)).name
    if teacher.multi_label != multi_label:
        kinds = {True: "multi-label", False: "single-label"}
        raise ConfigError(
            f"{KEY}: {name} is a {kinds[teacher.multi_label]} model and the data is {kinds[multi_label]}; "
            f"a teacher answers the student's task"
        )
    missing = [c for c in classes if c not in teacher.classes]
    extra = [c for c in teacher.classes if c not in classes]
    if missing or extra:
        parts = [f"lacks the data's {missing}"] if missing else []
        parts += [f"has {extra} the data lacks"] if extra else []
        raise ConfigError(f"{KEY}: {name}'s classes differ from the data's: it {' and '.join(parts)}")
    return [teacher.classes.index(c) for c in classes]


def class_logits(logits: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Logits with a column per class: a one-logit (binary) head z becomes [0, z], whose softmax
    is [1 - sigmoid(z), sigmoid(z)]."""
    if logits.shape[1] == 1 and not multi_label:
        return torch.cat([torch.zeros_like(logits), logits], dim=1)
    return logits


def soft_loss(student: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, *, multi_label: bool):
    """T^2 x KL(teacher || student) at temperature T: over the classes (batch mean), or, multi-label,
    the Bernoulli KL of each class (mean over images and classes). The T^2 keeps its gradients the
    size of the label loss's whatever T is."""
    s = class_logits(student.float(), multi_label=multi_label) / temperature
    if multi_label:
        cross = F.binary_cross_entropy_with_logits(s, teacher_probs, reduction="none")
        entropy = F.binary_cross_entropy(teacher_probs, teacher_probs, reduction="none")
        return (cross - entropy).mean() * temperature**2
    return F.kl_div(F.log_softmax(s, dim=1), teacher_probs, reduction="batchmean") * temperature**2


@dataclass(frozen=True)
class Lookup:
    """The cached teacher answers: logits [images, classes] and each sample row's place among them."""

    logits: torch.Tensor
    place: torch.Tensor  # [rows of samples] -> row of ``logits`` (-1: not cached, an unreadable image)


class Distiller:
    """The teacher and what the loop asks of it: soft targets for a batch, the mixed loss.

    Built by :func:`build` once the data is known; ``seconds`` gathers the time the teacher runs
    (the cached mode's one pass included), which :meth:`take_seconds` hands to each epoch's row."""

    def __init__(self, settings: DistillConfig, teacher: inference.Classifier, *, order: list[int], multi_label: bool):
        self.settings, self.teacher, self.order, self.multi_label = settings, teacher, order, multi_label
        self.mode = "live"
        self.lookup: Lookup | None = None
        self.digest = file_digest(str(teacher.path))
        self.seconds = 0.0
        self.norm: tuple[torch.Tensor, torch.Tensor] | None = None  # the student's mean and std (live mode)

    def facts(self) -> dict[str, Any]:
        """What a checkpoint's ``meta.distill`` records."""
        s = self.settings
        return {
            "teacher": Path(str(s.teacher)).name,
            "sha256": self.digest,
            "weight": s.weight,
            "temperature": s.temperature,
            "mode": self.mode,
        }

    def take_seconds(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds

    def teacher_logits(self, pixels_hwc: np.ndarray) -> torch.Tensor:
        """The teacher's logits for uint8 [B, H, W, C] at its size, a column per data class in the data's order."""
        start = time.perf_counter()
        raw = torch.from_numpy(np.asarray(self.teacher.logits(pixels_hwc), dtype=np.float32))
        self.seconds += time.perf_counter() - start
        if raw.ndim != 2 or not np.isfinite(raw.numpy()).all():
            raise UserError(f"{KEY}: {self.teacher.path} answers {list(raw.shape)} or non-finite logits: broken")
        return class_logits(raw, multi_label=self.multi_label)[:, self.order]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        scaled = logits.float() / self.settings.temperature
        return torch.sigmoid(scaled) if self.multi_label else torch.softmax(scaled, dim=1)

    def targets(self, x: torch.Tensor, rows: torch.Tensor | None, *, ratio: float | None) -> torch.Tensor:
        """The teacher's probabilities at T for the batch the student sees (``x``, normalised);
        ``ratio``: the batch was mixed in that ratio (cached answers are blended by it)."""
        if self.lookup is not None:
            if rows is None:
                raise UserError(f"{KEY}: the batches do not say which images they hold; use train.distill.mode: live")
            logits = self.lookup.logits[self.lookup.place[rows.cpu()]]
            probs = self.probabilities(logits).to(x.device)
            return blend(probs, ratio) if ratio is not None else probs
        return self.probabilities(self.teacher_logits(self.teacher_pixels(x))).to(x.device)

    def teacher_pixels(self, x: torch.Tensor) -> np.ndarray:
        """The student's (augmented, mixed) input as uint8 HxWxC at the teacher's size and channels."""
        mean, std = self.norm
        with torch.no_grad():
            pixels = (x.detach().float() * std + mean).clamp(0, 1) * 255
            if tuple(pixels.shape[-2:]) != self.teacher.image_size:
                pixels = F.interpolate(pixels, size=self.teacher.image_size, mode="bilinear", antialias=True)
            if pixels.shape[1] != self.teacher.channels:  # grey to RGB, or RGB to grey
                pixels = pixels.mean(1, keepdim=True).expand(-1, self.teacher.channels, -1, -1)
            return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def loss(self, logits: torch.Tensor, label_loss: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """The student's loss: the label loss and the teacher's, weighted by ``train.distill.weight``."""
        w = self.settings.weight
        soft = soft_loss(logits, teacher_probs, self.settings.temperature, multi_label=self.multi_label)
        return (1 - w) * label_loss + w * soft


def _cache_key(distiller: Distiller, dataset: loaders_mod.ImageDataset) -> str:
    t = distiller.teacher
    teacher = f"{distiller.digest}|{t.image_size}|{t.channels}|{t.fit}|{distiller.order}"
    return hashlib.sha1(f"{CACHE_FORMAT}|{teacher}|{dataset.samples.fingerprint()}".encode()).hexdigest()[:20]


def cache_answers(distiller: Distiller, dataset: loaders_mod.ImageDataset, *, cache_dir: Path | None = None) -> Lookup:
    """The teacher's logits for every image of ``dataset``'s samples (a fold's whole pool): the
    average over the image and its mirror image, each decoded at the teacher's own size. Kept in
    the cache folder and reused by any run of the same teacher on the same images."""
    whole = dataset.whole()
    rows = list(whole.indices)
    samples, t = whole.samples, distiller.teacher
    folder = cache_folder(cache_dir)
    key = _cache_key(distiller, whole)
    start = time.perf_counter()

    def fill(store: torch.Tensor) -> dict:
        bar = console.bar(len(rows), "teacher", unit="img")
        with ThreadPoolExecutor(max_workers=min(8, cpu_count())) as pool:
            for begin in range(0, len(rows), CACHE_BATCH):
                chunk = rows[begin : begin + CACHE_BATCH]
                pixels = np.stack(list(pool.map(lambda i: samples.read(i, t.image_size, t.channels, t.fit), chunk)))
                mirrored = np.ascontiguousarray(pixels[:, :, ::-1])
                views = torch.stack([distiller.teacher_logits(pixels), distiller.teacher_logits(mirrored)])
                store[begin : begin + len(chunk)] = views.mean(0)
                bar.update(len(chunk))
        bar.close()
        return {}

    shape = (len(rows), len(distiller.order))
    cached = cached_array(
        folder / f"distill-{key}.npy", shape, np.float32, key=KEY, fill=fill, content=f"distill|{key}"
    )
    place = torch.full((len(samples),), -1, dtype=torch.int64)
    place[torch.tensor(rows, dtype=torch.int64)] = torch.arange(len(rows))
    how = "reused" if cached.reused else f"in {time.perf_counter() - start:.1f}s"
    console.log(f"distill: the teacher's answers for {len(rows)} training images (and their mirror images) {how}")
    return Lookup(torch.as_tensor(np.asarray(cached.tensor)).float(), place)


def open_teacher(settings: DistillConfig, *, classes: list[str], multi_label: bool) -> Distiller:
    """The teacher loaded and checked against the data's classes (before any image is decoded)."""
    teacher = load_teacher(str(settings.teacher))
    order = class_order(teacher, classes, multi_label=multi_label)
    return Distiller(settings, teacher, order=order, multi_label=multi_label)


def start(
    distiller: Distiller,
    loaders: loaders_mod.Loaders,
    *,
    norm: tuple[torch.Tensor, torch.Tensor],
    cache_dir: str | Path | None = None,
    folds: bool = False,
) -> None:
    """Ready for the first batch: the teacher's answers cached (``cached`` mode), or the student's
    normalisation kept to undo it (``live``)."""
    settings = distiller.settings
    distiller.norm = norm
    streamed = not isinstance(loaders.train_set, loaders_mod.ImageDataset)  # shards: no rows to look answers up by
    if settings.mode == "cached" and streamed:
        raise ConfigError(
            "train.distill.mode: cached needs images it can name by row, and these are streamed from shards; "
            "use live or auto"
        )
    if settings.mode == "cached" or (settings.mode == "auto" and not streamed):
        distiller.mode = "cached"
        with distributed.main_first(shared=True):  # under DDP local rank 0 writes the file, the others read it
            distiller.lookup = cache_answers(
                distiller, loaders.train_set, cache_dir=Path(cache_dir) if cache_dir else None
            )
        loaders.train_set.positions = True
    if folds:
        console.warn(
            f"{KEY}: with data.folds each fold's held-out images must be new to the teacher too, or its "
            f"held-out score flatters the student; train the teacher on other images than the pool"
        )
    teacher = distiller.teacher
    console.log(
        f"distill: teacher {Path(str(settings.teacher)).name} ({teacher.format}, {teacher.image_size[0]}x"
        f"{teacher.image_size[1]}), weight {settings.weight:g}, temperature {settings.temperature:g}, {distiller.mode}"
    )
