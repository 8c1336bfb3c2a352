"""The `psp` command with faults injected into its training, for the fault tests that run real
processes: `python -m service.testing.faulty_psp serve ...` reads `PSP_FAULTS__*`
(`service.testing.faults.FaultSettings`), installs them through the training hooks, then runs
the `psp` command line as it is. A deployment runs `psp`, which knows nothing of faults.
"""

from __future__ import annotations

import logging

from service.cli.commands import app
from service.model.training_hooks import install_training_hooks
from service.testing.faults import FaultSettings, fault_hooks

log = logging.getLogger(__name__)


def main() -> None:
    settings = FaultSettings()
    log.warning("fault injection is on (PSP_FAULTS__*): %s", settings)
    install_training_hooks(fault_hooks(settings))
    app(prog_name="psp")


if __name__ == "__main__":
    main()
