"""Entry point of `make demo` and `make down`.

The pipeline (localcluster, the step images, the training DAG) is not built yet, so there is
nothing to start: say so plainly and fail, rather than pretend a demo ran.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args(argv)
    if args.action == "down":
        print("demo: nothing is running (the demo stack is not built yet)")
        return 0
    print(
        "demo: the pipeline is not built yet, so there is nothing to run.\n"
        "      What exists today: `make test` (quality gates and tests).",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
