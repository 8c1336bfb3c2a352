"""What rehearsal costs in training throughput: P5 of `serve_load.py` with replay on and off.

The same clients POST /train (wait=false) to the same `psp serve` as in P5; the figure is the
trainer's applied examples/s, with the default replay buffer and with `PSP_REPLAY__ROWS=0`,
measured back to back in one run. Goal: on ÷ off >= 0.7.

Run: `python benchmarks/replay_cost.py [--seconds 15] [--split]` (other options as serve_load).
"""

from __future__ import annotations

import sys

from _harness import REDIS_URL, machine_line, throwaway_dir, throwaway_redis_prefix
from serve_load import parse_args, service_training_rate


def main() -> None:
    split = "--split" in sys.argv
    args = parse_args([a for a in sys.argv[1:] if a != "--split"])
    path = "Redis, api + worker" if split else "in-process queue, role all"
    print(f"replay_cost: {machine_line()}")
    print(
        f"{path}; {args.train_clients} clients x {args.train_rows} rows per POST /train, "
        f"{args.contexts} contexts, {args.seconds:g} s measured"
    )
    rates = {}
    with throwaway_dir() as workdir:
        for label, replay_rows in (("replay on", None), ("replay off", "0")):
            extra = {} if replay_rows is None else {"PSP_REPLAY__ROWS": replay_rows}
            name = f"psp-{label.replace(' ', '-')}"
            if split:
                with throwaway_redis_prefix() as prefix:
                    env = {**extra, "PSP_REDIS_URL": REDIS_URL, "PSP_KEY_PREFIX": prefix}
                    figures = service_training_rate(args, workdir, name, env, split_roles=True)
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
