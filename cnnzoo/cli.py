"""The ``cnnzoo`` command line: a thin Typer layer over the Python API.

Every command imports its heavy parts (torch, the engine) inside the function, so
``cnnzoo --help`` answers at once. A :class:`cnnzoo.errors.UserError` becomes one line
on stderr and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import UserError

app = typer.Typer(
    name="cnnzoo",
    help="Train, evaluate and predict with convolutional image classifiers described in YAML.\n\n"
         "Start with:  cnnzoo train --config configs/quickstart.yaml",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}

CONFIG_HELP = "YAML config file (see configs/ for examples)."
TRUST_TORCHSCRIPT_HELP = ("Open a TorchScript file: it holds code that runs when loaded, so only one you "
                          "made (cnnzoo export) or otherwise trust. Without it, TorchScript is refused unopened.")
SET_HELP = ("Override a config key, e.g. --set train.epochs=5 or "
            "--set model.layers.0.Conv2d.out_channels=64 (value read as YAML; repeatable).")


# The shortcuts every command that trains (train, lr-find, sweep) takes, each one config key.
UNSET_OPTION = typer.Option([], "--unset", help="Remove a config key, back to its default (repeatable).")
DATA_OPTION = typer.Option(None, "--data", help="Image folder (sets data.root).")
EPOCHS_OPTION = typer.Option(None, "--epochs", min=1, help="Sets train.epochs.")
BATCH_SIZE_OPTION = typer.Option(None, "--batch-size", min=1, help="Sets train.batch_size.")
IMAGE_SIZE_OPTION = typer.Option(None, "--image-size", min=1, help="Sets data.image_size.")
DEVICE_OPTION = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps (sets train.device).")


def _training_overrides(set_: list[str], unset: list[str], data: Optional[str], epochs: Optional[int],
                        batch_size: Optional[int], image_size: Optional[int],
                        device: Optional[str] = None, *, name: Optional[str] = None) -> list[str]:
    """``--set`` items, then the shortcuts as ``key=value``, then ``--unset`` items as ``key!``
    (what :func:`cnnzoo.config.apply_override` removes)."""
    shortcuts = {"data.root": json.dumps(data) if data else None, "name": json.dumps(name) if name else None,
                 "train.epochs": epochs,
                 "train.batch_size": batch_size, "data.image_size": image_size,
                 "train.device": json.dumps(device) if device else None}
    overrides = list(set_) + [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    return overrides + [f"{key}!" for key in unset]


def _rank0() -> bool:
    """In a torchrun job every process runs the command; only rank 0 reports."""
    return os.environ.get("RANK", "0") == "0"


def _fail(message: str, code: int = 2) -> None:
    if _rank0():
        typer.echo(f"cnnzoo: error: {message}", err=True)
    raise typer.Exit(code)


def _guard(action):
    """Run ``action``; user errors become one line and exit 2 (unless --debug)."""
    try:
        return action()
    except UserError as exc:
        if _state["debug"]:
            raise
        _fail(str(exc))
    except KeyboardInterrupt:
        if _rank0():
            typer.echo("cnnzoo: interrupted", err=True)
        raise typer.Exit(130)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"cnnzoo {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _state["debug"] = debug


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    unset: List[str] = UNSET_OPTION,
    data: Optional[str] = DATA_OPTION,
    name: Optional[str] = typer.Option(None, "--name", "-n",
                                       help="Run name: the run folder is <runs>/<name>/<N> (sets name)."),
    epochs: Optional[int] = EPOCHS_OPTION,
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    runs: Path = typer.Option(Path("runs"), "--runs", "--out",
                              help="Folder that holds run folders (<runs>/<name>/<N>, <runs>/latest)."),
    resume: Optional[Path] = typer.Option(None, help="Continue a run from its last.pt."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
    nproc: int = typer.Option(1, "--nproc", min=1,
                              help="Processes on this machine, one per GPU (or sharing the CPU cores), "
                                   "trained together with DDP; runs torchrun for you."),
) -> None:
    """Train a model from a YAML config; writes a run folder (config, metrics, checkpoints, plots).

    Example:  cnnzoo train --config configs/quickstart.yaml --epochs 5
    Own data: cnnzoo train -c configs/clothing.yaml --data ~/photos --image-size 96 --name photos
    Resume:   cnnzoo train --resume runs/quickstart/1/last.pt
    4 GPUs:   cnnzoo train -c configs/clothing.yaml --nproc 4
              (the same as: torchrun --nproc-per-node 4 -m cnnzoo train -c configs/clothing.yaml)
    """
    def action():
        from .config import load_config

        if config is None and resume is None:
            raise UserError("give --config FILE (e.g. configs/quickstart.yaml) or --resume runs/.../last.pt")
        overrides = _training_overrides(set_, unset, data, epochs, batch_size, image_size, name=name)
        passed, source = list(overrides), config
        if resume is None:  # config errors come back before torch is imported
            source = load_config(config, overrides)
            overrides = []
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            from .distributed import launch

            argv = ["train", *(["--config", str(config)] if config else []),
                    *(["--resume", str(resume)] if resume else []),
                    *(f"--set={item}" for item in passed if not item.endswith("!")),
                    *(f"--unset={item[:-1]}" for item in passed if item.endswith("!")),
                    *(["--device", device] if device else []), "--runs", str(runs),
                    *(["--quiet"] if quiet else []), *(["--debug"] if _state["debug"] else [])]
            code = launch(nproc, argv)
            if code:
                raise typer.Exit(code)
            return
        from .engine import TrainingInterrupted, train as run_training

        try:
            run_dir = run_training(source, overrides, device=device, out=runs, quiet=quiet, resume=resume)
        except TrainingInterrupted as exc:
            if _rank0():
                typer.echo(f"\ncnnzoo: {exc}", err=True)
            raise typer.Exit(130)
        if quiet and _rank0():
            typer.echo(str(run_dir))

    _guard(action)


@app.command()
def summary(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    expand: bool = typer.Option(False, "--expand", help="Also list the stages inside a backbone layer."),
) -> None:
    """Show every layer's output shape and parameters, the totals, MACs and memory.

    Like Keras' model.summary(); shapes are checked with out = floor((W - K + 2P) / S) + 1.
    A pretrained backbone is one row; its frozen parameters are counted apart.
    """
    def action():
        from .config import load_config

        cfg = load_config(config, set_)  # config errors come back before torch is imported
        from .summary import format_summary, summarize

        result = summarize(cfg, expand)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            typer.echo(format_summary(result, cfg.run_name))

    _guard(action)


@app.command()
def predict(
    images: List[str] = typer.Argument(..., help="Image files, folders (searched recursively) or glob patterns."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "--model", "-m",
                                              help="Checkpoint, or an .onnx export (runs without torch). "
                                                   "Default: runs/latest's best.pt."),
    trust_torchscript: bool = typer.Option(False, "--trust-torchscript", help=TRUST_TORCHSCRIPT_HELP),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many ranked classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per image."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV rows, one per image."),
    batch_size: int = typer.Option(64, min=1, help="Images per forward pass."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
) -> None:
    """Predict the class of images with a trained checkpoint or an exported model.

    Exit code 0 when every image was predicted, 1 when some could not be read, 2 when none.
    Without torch:  cnnzoo predict --model runs/latest/best.onnx photo.jpg
    """
    def action():
        from . import checkpoint as ckpt_io
        from .inference import expand_inputs, load, records_to_csv

        if as_json and as_csv:
            raise UserError("choose one of --json and --csv")
        path = checkpoint or ckpt_io.default_checkpoint(runs)
        if checkpoint is None:
            typer.echo(f"cnnzoo: using {path}", err=True)
        model = load(path, device, trust_torchscript=trust_torchscript)
        paths, failures = expand_inputs(images)
        errors: list = list(failures)
        records = model.predict(paths, top_k=top_k, batch_size=batch_size, errors=errors, progress=True)
        for name, reason in errors:
            typer.echo(f"cnnzoo: cannot read {name}: {reason}", err=True)
        if as_json:
            typer.echo(json.dumps(records, indent=1))
        elif as_csv:
            typer.echo(records_to_csv(records, min(top_k, len(model.classes))), nl=False)
        else:
            width = max((len(r["image"]) for r in records), default=0)
            for r in records:
                ranked = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top_k"])
                typer.echo(f"{r['image']:<{width}}  {r['label']:<12} {100 * r['probability']:5.1f}%   [{ranked}]")
        if errors:
            raise typer.Exit(2 if not records else 1)

    _guard(action)


@app.command()
def evaluate(
    checkpoint_arg: Optional[Path] = typer.Argument(None, metavar="[CHECKPOINT]",
                                                    help="Checkpoint (default: runs/latest's best.pt)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-m",
                                              help="Checkpoint, as in predict (same as the argument)."),
    data: Optional[Path] = typer.Option(None, help="Labelled folder: a data root with test/ or validation/, "
                                                   "or a folder of class folders. Default: the training data."),
    split: Optional[str] = typer.Option(None, help="test or validation (default: test if there is one)."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="k for top-k accuracy."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    out: Optional[Path] = typer.Option(None, help="Where to write eval.json and confusion_matrix.png "
                                                  "(default: the checkpoint's folder)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per forward pass."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
) -> None:
    """Score a checkpoint: loss, accuracy, per-class precision/recall/F1, confusion matrix."""
    def action():
        from .evaluation import evaluate as run_evaluation, format_report

        if checkpoint_arg and checkpoint and checkpoint_arg != checkpoint:
            raise UserError(f"two checkpoints given ({checkpoint_arg} and --checkpoint {checkpoint}); give one")
        report = run_evaluation(checkpoint or checkpoint_arg, data, split, top_k, batch_size, out, device, runs,
                                progress=not as_json)
        if as_json:
            typer.echo(json.dumps(report))
        else:
            typer.echo(format_report(report))
            typer.echo(f"\nwrote {', '.join(report['outputs'])}")

    _guard(action)


@app.command()
def export(
    checkpoint_arg: Optional[Path] = typer.Argument(None, metavar="[CHECKPOINT]",
                                                    help="Checkpoint (default: runs/latest's best.pt)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (runs without torch) or torchscript."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="File or folder to write (default: beside the checkpoint, "
                                            "best.onnx / best.torchscript.pt)."),
    opset: int = typer.Option(17, "--opset", min=7, help="ONNX opset version."),
    tolerance: float = typer.Option(1e-4, "--tolerance", min=0.0,
                                    help="Largest probability difference from the checkpoint that passes."),
    force: bool = typer.Option(False, "--force", help="Replace a file at --out that is not an export of this "
                                                      "format (never the checkpoint itself)."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
) -> None:
    """Export a checkpoint to ONNX or TorchScript, then check it gives the checkpoint's probabilities.

    The file holds the classes, input size and normalisation, so it is used alone:
      cnnzoo export                       (runs/latest/best.pt -> runs/latest/best.onnx)
      cnnzoo predict --model runs/latest/best.onnx photo.jpg
      cnnzoo serve runs/latest/best.onnx
    Exit code 1 when the exported model disagrees with the checkpoint beyond --tolerance, or gives
    NaN or infinite probabilities. TorchScript is code: cnnzoo writes it for LibTorch (C++) and
    opens one only with predict/serve --trust-torchscript.
    """
    def action():
        from .exporting import export as run_export

        result = run_export(checkpoint_arg, fmt, out, opset, tolerance, runs, force=force)
        size = result.path.stat().st_size
        verdict = "ok" if result.ok else "FAILED"
        typer.echo(f"wrote {result.path} ({result.format}, {size / 2**20:.1f} MB)")
        typer.echo(f"parity with the checkpoint on {result.images} images: largest probability difference "
                   f"{result.max_difference:.2e} (tolerance {result.tolerance:g}): {verdict}")
        if result.not_finite:
            _fail(f"{result.path}: {result.not_finite} probabilities are NaN or infinite; do not deploy it",
                  code=1)
        if not result.ok:
            _fail(f"{result.path}: the exported model's probabilities differ from the checkpoint's by "
                  f"{result.max_difference:.2e} > {result.tolerance:g}; do not deploy it (try another "
                  f"--opset or --format)", code=1)

    _guard(action)


@app.command()
def serve(
    model: Optional[Path] = typer.Argument(None, metavar="[MODEL]",
                                           help="Checkpoint or .onnx export (runs without torch). "
                                                "Default: runs/latest's best.pt."),
    trust_torchscript: bool = typer.Option(False, "--trust-torchscript", help=TRUST_TORCHSCRIPT_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="Server processes, each with its own copy of the model."),
    max_bytes: int = typer.Option(10 * 2**20, "--max-bytes", min=1,
                                  help="Largest request body accepted: one image, or all files of a multipart "
                                       "upload together (counted as it arrives; never spooled to disk)."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Default top-k when a request gives none."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N (checkpoints and TorchScript)."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
) -> None:
    """Serve a model over HTTP, with a page to try it: open http://127.0.0.1:8000/ in a browser.

    POST /predict takes an image as the body or as multipart files (?top_k=N) and answers the
    records of predict --json; GET /info and GET /health describe the service.
      curl --data-binary @photo.jpg http://127.0.0.1:8000/predict
      curl -F file=@a.jpg -F file=@b.jpg 'http://127.0.0.1:8000/predict?top_k=3'
    Bounds: --max-bytes per request, 64 megapixels and 1 GiB of decoding memory at once (larger
    images get 413). On a public network put a reverse proxy in front (docs/security.md).
    """
    def action():
        from .serve import serve as run_server

        run_server(model, host, port, workers, max_bytes, top_k, device, runs, trust_torchscript=trust_torchscript)

    _guard(action)


@app.command()
def explain(
    image: Path = typer.Argument(..., help="The image to explain."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-m",
                                              help="Checkpoint (default: runs/latest's best.pt)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="The HTML file (default: <run>/explain/<image>.html)."),
    target: Optional[str] = typer.Option(None, help="Class for Grad-CAM (default: the predicted one)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write every picture as a PNG into this folder."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
) -> None:
    """Show what the network does to one image: every layer's output, filters, Grad-CAM, in one HTML page.

    Example:  cnnzoo explain ~/.cache/cnnzoo/shapes-v1/validation/star/star_0000.jpg
    The page embeds its pictures and opens in any browser without a network.
    """
    def action():
        from .explanation import explain as run_explain

        path, report = run_explain(checkpoint, image, out, target, png, runs)
        chosen = report.classes[report.target]
        typer.echo(f"{image}: {report.classes[int(report.probabilities.argmax())]} "
                   f"({100 * float(report.probabilities.max()):.1f}%); Grad-CAM for {chosen}")
        typer.echo(f"wrote {path}" + (f" and the pictures in {png}" if png else ""))

    _guard(action)


@app.command("lr-find")
def lr_find(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    unset: List[str] = UNSET_OPTION,
    data: Optional[str] = DATA_OPTION,
    epochs: Optional[int] = EPOCHS_OPTION,
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    steps: int = typer.Option(200, min=10, help="Training steps while the rate grows."),
    start: float = typer.Option(1e-7, help="First learning rate."),
    end: float = typer.Option(1.0, help="Last learning rate."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="The plot: a .png/.svg/.pdf file, or a folder for <name>.png "
                                            "(default: <runs>/lr-find/<name>.png)."),
    runs: Path = typer.Option(Path("runs"), "--runs", help="Folder that holds run folders (and lr-find/)."),
    apply: bool = typer.Option(False, "--apply", help="Also write the config with the suggested train.lr and "
                                                      "this line's --set/shortcuts, beside the plot "
                                                      "(<plot folder>/<config>.lr.yaml)."),
) -> None:
    """Find a learning rate: train briefly while the rate grows exponentially, plot the loss, suggest one.

    Example:  cnnzoo lr-find -c configs/quickstart.yaml --apply
              (writes runs/lr-find/quickstart.png and runs/lr-find/quickstart.lr.yaml)
    Nothing is saved but the plot (and, with --apply, the config copy); configs/ is never written.
    """
    def action():
        from .config import load_config

        overrides = _training_overrides(set_, unset, data, epochs, batch_size, image_size, device)
        cfg = load_config(config, overrides)  # config errors come back before torch is imported
        from .tuning import apply_lr, lr_find as run_lr_find

        result = run_lr_find(cfg, [], steps, start, end, out, runs_root=runs)
        typer.echo(f"suggested learning rate: {result.suggestion:.3g} ({result.how}); "
                   f"config has {cfg.train.lr:g}; loss curve: {result.plot}")
        if apply:
            written = apply_lr(config, result.suggestion, overrides, result.plot.parent)
            typer.echo(f"wrote {written}; train with it: cnnzoo train -c {written}")

    _guard(action)


@app.command()
def sweep(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    grid: List[str] = typer.Option(..., "--grid", "-g",
                                   help="A key and its values, e.g. --grid train.lr=0.01,0.003 (repeatable)."),
    trials: Optional[int] = typer.Option(None, min=1, help="Run this many random combinations, not all."),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    unset: List[str] = UNSET_OPTION,
    data: Optional[str] = DATA_OPTION,
    epochs: Optional[int] = EPOCHS_OPTION,
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    image_size: Optional[int] = IMAGE_SIZE_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    runs: Path = typer.Option(Path("runs"), "--runs", help="Folder that holds run folders."),
    restart: bool = typer.Option(False, "--restart", help="Start the sweep over: forget its saved state "
                                                          "(finished run folders stay)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch lines."),
) -> None:
    """Train every combination of --grid values as its own run, then compare them (table and plot).

    Example:  cnnzoo sweep -c configs/quickstart.yaml --grid train.lr=0.01,0.003,0.001 \\
                  --grid model.layers.13.dense.out_features=32,64
    Runs go to runs/<name>-sweep/<N>/; run the same command again to finish an interrupted sweep.
    At the end runs/latest points at the best run. Over 1000 combinations need --trials K.
    """
    def action():
        from .config import load_config

        overrides = _training_overrides(set_, unset, data, epochs, batch_size, image_size, device)
        load_config(config, overrides)  # config errors come back before torch is imported
        from .engine import TrainingInterrupted
        from .tuning import markdown_table, sweep as run_sweep

        try:
            result = run_sweep(config, grid, trials, overrides, runs, quiet, restart=restart)
        except TrainingInterrupted as exc:
            typer.echo(f"\ncnnzoo: sweep interrupted in {exc.run_dir}; run the same command again to continue",
                       err=True)
            raise typer.Exit(130)
        typer.echo(markdown_table(result.rows, list(result.rows[0])), nl=False)
        typer.echo(f"wrote {result.table_csv}, {result.table_md} and {result.plot}")
        typer.echo(f"{runs / 'latest'} -> the best run, {result.rows[0]['run']}")

    _guard(action)


def _is_collective_failure(exc: Exception) -> bool:
    """A DDP collective that failed because another process died or stopped answering."""
    dist_error = getattr(sys.modules.get("torch.distributed"), "DistError", ())
    text = str(exc)
    return isinstance(exc, dist_error) or any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                  "Timed out", "timed out", "NCCL"))


def main() -> None:
    if "--debug" in sys.argv[1:]:  # accepted anywhere on the line, not only before the command
        sys.argv.remove("--debug")
        _state["debug"] = True
        sys.argv.insert(1, "--debug")
    try:
        app()
    except Exception as exc:  # a failure cnnzoo did not foresee: still one line unless --debug
        if _state["debug"]:
            raise
        if isinstance(exc, ModuleNotFoundError) and exc.name in ("torch", "torchvision"):
            # a deployment installed with --no-deps: exports run without torch, the rest needs it
            typer.echo(f"cnnzoo: error: this command needs {exc.name} (pip install torch torchvision); "
                       f"without torch cnnzoo predicts and serves .onnx exports only", err=True)
            sys.exit(2)
        from .versions import describe_failure

        if (mismatch := describe_failure(exc)) is not None:  # "operator torchvision::nms does not exist"
            typer.echo(f"cnnzoo: error: {mismatch}", err=True)
            sys.exit(2)
        if "WORLD_SIZE" in os.environ and _is_collective_failure(exc):
            typer.echo(f"cnnzoo: error: process {os.environ.get('RANK', '?')}: another process of this run "
                       f"stopped answering ({str(exc).splitlines()[0][:160]})", err=True)
            sys.exit(1)
        typer.echo(f"cnnzoo: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                   err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
