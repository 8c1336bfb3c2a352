"""The methods a benchmark compares, parsed from names such as `complex` or `onepower-local`.

- `none`, `binary`, `complex`, `rotation`, `onepower`: one network of that context kind
  (`none` is the same architecture without contexts). Each task gets its own context: seed = task
  index, or for one-power the power = task index.
- `separate`: one independent plain network per task (an upper bound that pays the memory).
- `ewc`: one plain network trained with online EWC (see `baselines.OnlineEWC`).
- `embed`: one plain network whose input is the row beside a learned embedding of its context;
  `gains`: one plain network whose every layer multiplies its input by the context's learned
  gains, random signs at first (`tenant_models`). The models a practitioner would build instead.
- `river`: one river softmax regression per context; `river-forest`: one adaptive random forest
  per context (`river_runner`; the `bench` extra installs river).

Suffixes, in any order: `-local` mixes each context with its neighbours (paper eq. 7; complex
and one-power only); `-continuous` lets a one-power context follow the stream's position through
a fractional power, so a rotating input gets a new context at every step (paper §7.3);
`-real` keeps each layer's real part instead of carrying complex activations between layers
(complex and one-power only; see `psp_core.kinds.complex`); `-replay` rehearses: every step mixes in
rows drawn from a bounded buffer of past rows, as the service does by default (any kind, `none`
included, and `embed` and `gains`, so that what superposition adds on top of rehearsal is
measured); `-reservoir`, with
`-replay`, keeps one plain reservoir sample of all rows instead of sharing the buffer equally
among contexts (the comparison of the two in docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from psp_core import CONTEXT_KINDS, ContextSpec, ModelConfig

PSP_KINDS = CONTEXT_KINDS
# Learned per-context parameters on one plain network: what rehearses like the superposed kinds.
LEARNED_CONTEXTS = ("embed", "gains")
BASELINES = ("separate", "ewc", *LEARNED_CONTEXTS, "river")
DEFAULT_METHODS = (
    *PSP_KINDS,
    *(f"{kind}-replay" for kind in PSP_KINDS),
    "separate",
    "ewc",
)
# Online EWC consolidates when the task changes, which an interleaved stream does at every block.
TENANTS_METHODS = (
    *PSP_KINDS,
    *(f"{kind}-replay" for kind in (*PSP_KINDS, *LEARNED_CONTEXTS)),
    "separate",
    "river",
)
_FLAGS = ("local", "continuous", "real", "replay", "reservoir", "forest")


@dataclass(frozen=True)
class Method:
    """One compared method.

    Attributes:
        name: The name it was given by, e.g. `onepower-continuous`.
        family: `psp` (a `psp_core` kind, `none` included), or a baseline's name: `separate`,
            `ewc`, `embed`, `gains` or `river`.
        kind: The `psp_core` context kind; `none` for the two baselines.
        local_mix: Mix each context with its neighbours (paper eq. 7).
        continuous: Follow the stream's fractional position with a fractional power.
        real_part: Keep each layer's real part (complex kinds), not complex activations.
        replay: Mix rows of a replay buffer into every step.
        plain_reservoir: The buffer is one reservoir over all rows, not balanced by context.
        forest: (`river`) an adaptive random forest, not a softmax regression.
    """

    name: str
    family: str
    kind: str
    local_mix: bool = False
    continuous: bool = False
    replay: bool = False
    real_part: bool = False
    plain_reservoir: bool = False
    forest: bool = False

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
                f"method {name!r}: suffixes are -local, -continuous, -real, -replay, "
                "-reservoir and -forest, each at most once"
            )
        local_mix, continuous, replay = "local" in flags, "continuous" in flags, "replay" in flags
        if local_mix and base not in ("complex", "onepower"):
            raise ValueError(f"method {name!r}: -local applies to complex and onepower only")
        if continuous and base != "onepower":
            raise ValueError(f"method {name!r}: -continuous applies to onepower only")
        real_part = "real" in flags
        if real_part and base not in ("complex", "onepower"):
            raise ValueError(f"method {name!r}: -real applies to complex and onepower only")
        plain_reservoir = "reservoir" in flags
        if plain_reservoir and not replay:
            raise ValueError(f"method {name!r}: -reservoir describes the buffer of -replay")
        if replay and base in BASELINES and base not in LEARNED_CONTEXTS:
            raise ValueError(
                f"method {name!r}: -replay applies to the superposed kinds, none, embed and gains"
            )
        forest = "forest" in flags
        if forest and base != "river":
            raise ValueError(f"method {name!r}: -forest applies to river only")
        family = base if base in BASELINES else "psp"
        kind = "none" if base in BASELINES else base
        return cls(
            name.strip(),
            family,
            kind,
            local_mix,
            continuous,
            replay,
            real_part,
            plain_reservoir,
            forest,
        )

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

    def architecture(self, config: ModelConfig) -> ModelConfig:
        """The network this method trains, from the run's shared architecture."""
        return replace(
            config,
            kind=self.kind,
            local_mix=self.local_mix,
            complex_activations=not self.real_part,
        )


def parse_methods(names: str) -> tuple[Method, ...]:
    """Parses a comma-separated list of method names, keeping the order and refusing repeats."""
    methods = tuple(Method.parse(name) for name in names.split(",") if name.strip())
    if not methods:
        raise ValueError("name at least one method")
    seen = [method.name for method in methods]
    if len(set(seen)) != len(seen):
        raise ValueError(f"methods repeat in {names!r}")
    return methods
