"""``python -m tlsweep.report DIR``: (re)build the report of a sweep or a run from its files."""

from __future__ import annotations

import logging
import sys

from tlsweep.errors import TlsweepError
from tlsweep.paths import folder_command
from tlsweep.report import DEFAULT_TOP, build_report


def main(argv: list[str] | None = None) -> int:
    """Build the report; one ``error:`` line and exit code 1 on a user error."""
    parser = folder_command(
        "python -m tlsweep.report",
        "Compare every trial of every job of a tlsweep sweep (or run) in report.html, report.md and trials.csv, "
        "written into the folder. Works while the sweep runs and after a crash.",
    )
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, help="trials whose curves are plotted (default 5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = build_report(args.folder, args.top)
    except TlsweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a read-only folder, a full disk
        print(f"error: cannot write the report into {args.folder} ({e.strerror or e}); make it writable",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"report written to {paths['html']} (also {paths['md'].name} and {paths['csv'].name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
