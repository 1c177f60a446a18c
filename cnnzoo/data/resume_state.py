"""Where a training loader stands inside an epoch: saved with a mid-epoch ``last.pt`` and given back
when the run resumes, so that it goes on at the next unseen batch (:mod:`cnnzoo.training.midepoch`).

Two kinds of loader, two ways, for one reason each:

* Decoded or cached images (:class:`~cnnzoo.data.loaders.ImageDataset`, also a Hugging Face dataset
  or a manifest, and the frozen-feature cache) are read in the order of
  :class:`~cnnzoo.data.batch_order.EpochBatches`, which depends only on (seed, epoch), and each batch's
  augmentation is seeded by its own seed. The state is the number of batches taken; a resumed
  pass skips them in the sampler, without reading an image. torchdata's ``StatefulDataLoader``
  would add nothing here but a tie to the loader-worker count (its saved state has one entry per
  worker), which ``data.workers: auto`` may change on another machine.
* Streams (:class:`~cnnzoo.data.shards.ShardStream`, and any ``IterableDataset`` that implements
  torchdata's Stateful protocol, ``state_dict()`` / ``load_state_dict()`` of plain ints, strings
  and lists) run inside loader workers that each read their own share: only the workers know how
  far they got. torchdata's ``StatefulDataLoader`` gathers their states after every batch it hands
  out and gives each worker its own back on resume: :func:`stateful_loader` makes one.

Floor 5 (data): torch-free at import; torchdata is imported when a stream's loader is made.
"""

from __future__ import annotations

import warnings
from typing import Any


def stateful_loader(dataset: Any, **options: Any) -> Any:
    """torchdata's ``StatefulDataLoader`` over ``dataset`` (the options are ``DataLoader``'s)."""
    from torchdata.stateful_dataloader import StatefulDataLoader  # lazy: streams only

    with warnings.catch_warnings():  # torchdata calls torch.set_vital, deprecated in torch 2.14
        warnings.filterwarnings("ignore", message=".*set_vital.*")
        return StatefulDataLoader(dataset, **options)


def loader_state(loader: Any, batches: int) -> dict[str, Any]:
    """Where ``loader`` stands after handing out ``batches`` batches of this epoch."""
    if hasattr(loader, "state_dict"):
        return {"batches": batches, "stream": loader.state_dict()}
    return {"batches": batches}


def resume_loader(loader: Any, state: dict[str, Any]) -> None:
    """Make ``loader``'s next pass (its epoch set already) go on where ``state`` was saved."""
    if "stream" in state:
        loader.load_state_dict(state["stream"])
    else:
        loader.batch_sampler.start_at(int(state["batches"]))


def loader_facts(loader: Any) -> dict[str, Any]:
    """What a saved position is only valid for: the samples, shards and batches of an epoch, and
    (for a stream) the loader workers, which each read their own share of it."""
    dataset = loader.dataset
    facts: dict[str, Any] = {"samples": len(dataset), "batches": len(loader)}
    if hasattr(dataset, "shards"):
        facts["shards"] = len(dataset.shards)
    if hasattr(loader, "state_dict"):
        facts["workers"] = int(getattr(loader, "workers", 0))
    return facts
