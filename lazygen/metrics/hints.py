"""What FLOP counting must know about a component beyond the shapes it is called with.

FLOPs are counted by running a generation on the meta device, where tensors have shapes but no values:
exact when a component's work depends on shapes alone, and fast because calls of equal shapes are counted
once and replayed (``perf.shape_memo``). A component whose work depends on values (which drafts are
accepted, whether a step is skipped) must be counted on a real run instead, and a policy method whose
FLOPs are affine in the rows of its first tensor argument (a per-call part plus a per-row part) can be
counted at two row counts and interpolated for every other.
Components declare this next to their class with :func:`flop_hints`; the policy and sampler APIs carry
none of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class FlopHints:
    static_shapes: bool = True  # the work never depends on tensor values: countable on the meta device
    row_affine: tuple[str, ...] = ()  # methods whose FLOPs are affine in their first tensor's rows


_HINTS: dict[type, FlopHints] = {}


def flop_hints(*, static_shapes: bool = True, row_affine: tuple[str, ...] = ()) -> Callable[[type], type]:
    """Class decorator: ``@flop_hints(static_shapes=False)`` or ``@flop_hints(row_affine=("diffusion_head",))``."""

    def add(cls: type) -> type:
        _HINTS[cls] = FlopHints(static_shapes, tuple(row_affine))
        return cls

    return add


def hints_for(component: object) -> FlopHints:
    """The hints of a component's class, or of its nearest base that declares some (default: none)."""
    for cls in type(component).__mro__:
        if cls in _HINTS:
            return _HINTS[cls]
    return FlopHints()
