"""torchrun, ending with the step's exit code: ``python -m helmsman_steps.torchrun ARGS``.

torchrun (``torch.distributed.run``) ends with 1 whenever a worker fails, so a step's "bad
input" (exit 2: retrying cannot help, see ``exitcodes``) would be retried like an internal
failure. This runs torchrun's own ``main`` with the same arguments and, when workers failed,
ends with 2 if any worker exited with bad input, else with 1. Which worker torchrun sees fail
first is a race (the others fail on the loss of their peer), so the workers leave a mark in a
folder this process gives them (``exitcodes.MARK_DIR_ENV``) rather than relying on the codes
torchrun collected.
"""

from __future__ import annotations

import os
import sys
import tempfile

from helmsman_steps import exitcodes
from helmsman_steps.exitcodes import ExitCode


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    with tempfile.TemporaryDirectory(prefix="helmsman-exit-") as marks:
        os.environ[exitcodes.MARK_DIR_ENV] = marks  # the workers inherit it
        try:
            torchrun(argv)
        except ChildFailedError as exc:
            codes = {failure.exitcode for failure in exc.failures.values()}
            bad = ExitCode.BAD_INPUT in codes or exitcodes.bad_input_recorded(marks)
            return int(ExitCode.BAD_INPUT if bad else ExitCode.INTERNAL)
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
