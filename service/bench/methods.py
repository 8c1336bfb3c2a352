"""The methods a benchmark compares, parsed from names such as `complex` or `onepower-local`.

- `none`, `binary`, `complex`, `rotation`, `onepower`: one network of that context kind
  (`none` is the same architecture without contexts). Each task gets its own context: seed = task
  index, or for one-power the power = task index.
- `separate`: one independent plain network per task (an upper bound that pays the memory).
- `ewc`: one plain network trained with online EWC (see `baselines.OnlineEWC`).

Suffixes, in any order: `-local` mixes each context with its neighbours (paper eq. 7; complex
and one-power only); `-continuous` lets a one-power context follow the stream's position through
a fractional power, so a rotating input gets a new context at every step (paper §7.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from psp_core import ContextSpec

PSP_KINDS = ("none", "binary", "complex", "rotation", "onepower")
BASELINES = ("separate", "ewc")
DEFAULT_METHODS = (*PSP_KINDS, *BASELINES)
_FLAGS = ("local", "continuous")


@dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes:
        name: The name it was given by, e.g. `onepower-continuous`.
        family: `psp` (a `psp_core` kind, `none` included), `separate` or `ewc`.
        kind: The `psp_core` context kind; `none` for the two baselines.
        local_mix: Mix each context with its neighbours (paper eq. 7).
        continuous: Follow the stream's fractional position with a fractional power.
    """

    name: str
    family: str
    kind: str
    local_mix: bool = False
    continuous: bool = False

    @classmethod
    def parse(cls, name: str) -> Method:
        """Reads a method name.

        Raises:
            ValueError: The name or a suffix is unknown, or does not fit the kind.
        """
        base, *flags = name.strip().split("-")
        if base not in PSP_KINDS + BASELINES:
            known = ", ".join(PSP_KINDS + BASELINES)
            raise ValueError(f"unknown method {name!r}; the names are {known}")
        unknown = [flag for flag in flags if flag not in _FLAGS]
        if unknown or len(set(flags)) != len(flags):
            raise ValueError(
                f"method {name!r}: suffixes are -local and -continuous, each at most once"
            )
        local_mix, continuous = "local" in flags, "continuous" in flags
        if local_mix and base not in ("complex", "onepower"):
            raise ValueError(f"method {name!r}: -local applies to complex and onepower only")
        if continuous and base != "onepower":
            raise ValueError(f"method {name!r}: -continuous applies to onepower only")
        family = base if base in BASELINES else "psp"
        kind = "none" if base in BASELINES else base
        return cls(name.strip(), family, kind, local_mix, continuous)

    def context(self, task: int, position: float) -> tuple[str, ContextSpec]:
        """The context key and spec for a batch of task `task` at stream position `position`.

        Keys name the context, so a context is registered once and found again when its task
        comes back.
        """
        if self.continuous:
            return f"power-{position!r}", ContextSpec(power=position)
        if self.kind == "onepower":
            return f"task-{task}", ContextSpec(power=float(task))
        return f"task-{task}", ContextSpec(seed=task)


def parse_methods(names: str) -> tuple[Method, ...]:
    """Parses a comma-separated list of method names, keeping the order and refusing repeats."""
    methods = tuple(Method.parse(name) for name in names.split(",") if name.strip())
    if not methods:
        raise ValueError("name at least one method")
    seen = [method.name for method in methods]
    if len(set(seen)) != len(seen):
        raise ValueError(f"methods repeat in {names!r}")
    return methods
