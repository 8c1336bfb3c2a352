"""What rehearsal costs in training throughput: P5 (`training_throughput.py`) with
replay on and off.

The same clients POST /train (wait=false) to the same `psp serve` as in P5; the figure is the
trainer's applied examples/s, with the default replay buffer and with `PSP_REPLAY__ROWS=0`,
measured back to back in one run. Goal: on ÷ off >= 0.7.

Run: `python benchmarks/replay_cost.py [--seconds 15] [--split] [--per-step N]` (other options
as training_throughput.py); `--per-step` sets PSP_REPLAY__PER_STEP of the replaying server.
"""

from __future__ import annotations

import sys

from _harness import machine_line, throwaway_dir
from _stores import throwaway_stores
from training_throughput import parse_args, service_training_rate


def _take_option(argv: list[str], name: str) -> str | None:
    """Removes `name VALUE` from `argv` and returns VALUE."""
    if name not in argv:
        return None
    at = argv.index(name)
    value = argv[at + 1]
    del argv[at : at + 2]
    return value


def main() -> None:
    argv = sys.argv[1:]
    split = "--split" in argv
    argv = [a for a in argv if a != "--split"]
    per_step = _take_option(argv, "--per-step")
    args = parse_args(argv)
    path = "Redis, api + worker" if split else "in-process queue, role all"
    print(f"replay_cost: {machine_line()}")
    print(
        f"{path}; {args.train_clients} clients x {args.train_rows} rows per POST /train, "
        f"{args.contexts} contexts, {args.seconds:g} s measured; replayed rows per step: "
        f"{per_step or 'the default'}"
    )
    rates = {}
    with throwaway_dir() as workdir:
        replaying = {"PSP_REPLAY__PER_STEP": per_step} if per_step else {}
        for label, extra in (("replay on", replaying), ("replay off", {"PSP_REPLAY__ROWS": "0"})):
            name = f"psp-{label.replace(' ', '-')}"
            if split:
                with throwaway_stores(postgres=False, redis=True) as stores:
                    env = {**extra, **stores}
                    figures = service_training_rate(args, workdir, name, env, workers=1)
            else:
                figures = service_training_rate(args, workdir, name, extra)
            rates[label] = figures.applied_rate
            print(
                f"  {label}: {figures.applied_rate:,.0f} applied examples/s "
                f"({figures.examples:,.0f} examples; {figures.others})"
            )
    print(f"  replay on ÷ off: {rates['replay on'] / rates['replay off']:.2f}   goal >= 0.7")


if __name__ == "__main__":
    main()
