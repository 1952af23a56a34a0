"""``python -m tlsweep.weights``: download backbone weights on a connected machine, list what is cached.

Cluster nodes often have no internet. Fetch the weights where there is, with the same backbone
(and ``dataset.image_size``) overrides the runs will use, then copy the two caches across:

    python -m tlsweep.weights fetch backbone=mobilenet_v2,resnet,hub_resnet
    python -m tlsweep.weights list

Keras application weights go to ``$KERAS_HOME/models`` (``~/.keras/models``), TF Hub models to
``$TFHUB_CACHE_DIR`` (``~/.cache/tfhub_modules``), KerasHub presets to ``$KAGGLEHUB_CACHE``
(``~/.cache/kagglehub``). Fetching builds each backbone exactly as a run does, so a backbone that
fetched here loads offline there.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tlsweep.console import native_stderr_to  # noqa: E402
from tlsweep.errors import TlsweepError  # noqa: E402

log = logging.getLogger("tlsweep.weights")


def fetch(overrides: list[str]) -> tuple[list[str], list[TlsweepError]]:
    """Load the backbone of each combination of ``overrides`` as a run would, downloading what is missing.

    Returns a line per backbone that is ready, and the error of each that is not.
    """
    from tlsweep.config import compose_spec, sweep_combinations
    from tlsweep.paths import register_resolvers
    from tlsweep.tasks import task_for_backbone

    register_resolvers()
    lines, errors = [], []
    for combination in sweep_combinations(overrides):
        try:
            spec = _spec(combination, compose_spec)
            backbone, size = spec.backbone, spec.image_size
            loaded = task_for_backbone(backbone).load_backbone(spec)
        except TlsweepError as e:  # this backbone's line; the others are still fetched
            errors.append(e)
            continue
        if not (backbone.handle or backbone.preset or backbone.weights == "imagenet"):
            lines.append(f"ready    {backbone.name}: nothing to download (weights: {backbone.weights})")
            continue
        lines.append(f"ready    {backbone.name}{f' at {size} px' if size else ''}: {loaded.source}")
    return lines, errors


def _spec(combination: list[str], compose: Any) -> Any:
    """The spec a run of ``combination`` would have. Without a dataset given, a text encoder is fetched as for
    the embedded text demo (the default dataset, the image demo, refuses it); no data is read either way."""
    try:
        return compose(combination)
    except TlsweepError:
        if any(o.lstrip("+").startswith("dataset=") for o in combination):
            raise
        try:
            return compose([*combination, "dataset=text_demo"])
        except TlsweepError:
            pass
        raise


def cached() -> list[str]:
    """Lines describing the Keras and TF Hub weight caches: each file or model, its size, and problems."""
    from tlsweep import hub  # these import TensorFlow: after its lines are sent away (main)
    from tlsweep.tasks.images.backbones import keras_weights_dir

    lines = []
    keras_dir = keras_weights_dir()
    files = sorted(p for p in keras_dir.glob("*") if p.is_file()) if keras_dir.is_dir() else []
    lines.append(f"Keras application weights in {keras_dir} (set KERAS_HOME to move it):")
    lines += [f"  {_size(p.stat().st_size):>9}  {p.name}" for p in files] or ["  (none)"]
    hub_dir = hub.cache_dir()
    lines.append(f"TF Hub models in {hub_dir} (set TFHUB_CACHE_DIR to move it):")
    models = sorted(p for p in hub_dir.iterdir() if p.is_dir()) if hub_dir.is_dir() else []
    shown = 0
    for model in models:
        if model.name.endswith(".tmp"):
            lines.append(f"  {'partial':>9}  {model.name}: a download that did not finish; delete it")
            shown += 1
            continue
        descriptor = model.with_name(f"{model.name}.descriptor.txt")
        handle = _handle_in(descriptor) if descriptor.is_file() else model.name
        size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
        problem = ""
        if not (model / "saved_model.pb").is_file() or not (model / "variables").is_dir():
            problem = f"  INCOMPLETE: delete {model} and fetch again"
        elif model.with_name(f"{model.name}.lock").exists():
            problem = "  (a download is in progress, or one was cut off)"
        lines.append(f"  {_size(size):>9}  {handle}  [{model}]{problem}")
        shown += 1
    if not shown:
        lines.append("  (none)")
    return lines + _presets()


def _presets() -> list[str]:
    """KerasHub presets kagglehub downloaded: ``models/<owner>/<model>/<framework>/<variant>/<version>``."""
    from tlsweep import kerashub

    root = kerashub.cache_dir()
    lines = [f"KerasHub presets in {root} (set KAGGLEHUB_CACHE to move it):"]
    folders = sorted(p.parent for p in (root / "models").glob("*/*/*/*/*/config.json")) if root.is_dir() else []
    for folder in folders:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        problem = "" if (folder / "model.weights.h5").is_file() else "  INCOMPLETE: no model.weights.h5; fetch again"
        lines.append(f"  {_size(size):>9}  {folder.relative_to(root / 'models')}  [{folder}]{problem}")
    return lines + ([] if folders else ["  (none)"])


def _handle_in(descriptor: Path) -> str:
    for line in descriptor.read_text(errors="replace").splitlines():
        if line.startswith("Module: "):
            return line.removeprefix("Module: ").strip()
    return descriptor.name.removesuffix(".descriptor.txt")


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def main(argv: list[str] | None = None) -> int:
    """``fetch`` or ``list``; one ``error:`` line and exit code 1 on a user error."""
    parser = argparse.ArgumentParser(
        prog="python -m tlsweep.weights",
        description="Download backbone weights on a machine with internet (fetch), or show the caches (list). "
        "Copy $KERAS_HOME/models, $TFHUB_CACHE_DIR and $KAGGLEHUB_CACHE to a machine without internet to run there.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", help="download the weights the given backbones need")
    get.add_argument("overrides", nargs="*", help="Hydra overrides as for a run, e.g. backbone=resnet,efficientnet")
    commands.add_parser("list", help="show cached weights, where they are and their sizes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        lines, errors = fetch(args.overrides) if args.command == "fetch" else (cached(), [])
    except TlsweepError as e:
        lines, errors = [], [e]
    print("\n".join(lines))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    native_stderr_to(None)  # TensorFlow's C++ lines stay off the terminal
    sys.exit(main())
