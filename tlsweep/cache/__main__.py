"""``python -m tlsweep.cache list|clear [folder]``: what the feature cache holds, and emptying it.

Each key is one part of a job's cache (a cut of one view, or a dataset's decoded images); jobs
rebuild whatever they need that is gone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tlsweep.cache.store import clear, describe, entries, gigabytes

DEFAULT = "outputs/.cache"  # conf/config.yaml's feature_cache.dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tlsweep.cache", description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", choices=["list", "clear"], help="list: each key, its size and last use; clear: remove all"
    )
    parser.add_argument("folder", nargs="?", default=DEFAULT, help=f"the cache folder (default: {DEFAULT})")
    options = parser.parse_args(argv)
    folder = Path(options.folder).expanduser()
    if not folder.is_dir():
        print(f"no feature cache in {folder}: nothing to {options.command}", file=sys.stderr)
        return 0 if options.command == "clear" else 1
    if options.command == "list":
        found = entries(folder)
        for entry in sorted(found, key=lambda e: -e.used):
            print(describe(entry))
        print(f"{len(found)} key(s), {gigabytes(sum(e.bytes for e in found))} in {folder}")
        return 0
    removed = clear(folder)
    print(f"removed {len(removed)} key(s), {gigabytes(sum(e.bytes for e in removed))}, from {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
