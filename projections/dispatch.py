"""`event.mutate(aggregate)` for the events of `@event` methods, without the per-event lookups.

The library's `DecoratedFuncCaller.apply` finds the decorated method, builds a dict of the
event's attributes, filters it by the method's signature and binds the method, for every event:
a quarter of a rebuild's fold. Here that is worked out once per event class; the method, the
checks and the version and `modified_on` updates are the library's. A class whose `mutate`,
`apply` or `_as_dict` differs from the library's plain path keeps calling `event.mutate`.
"""

from __future__ import annotations

import inspect
import operator
import types
from collections.abc import Callable
from typing import Any

from eventsourcing.domain import (
    CanMutateAggregate,
    DecoratedFuncCaller,
    OriginatorIDError,
    OriginatorVersionError,
    decorated_funcs,
)

# Per event class: the decorated function, the names of its keyword parameters and a getter of
# their values from the event's attributes (None: not on the plain path, call its own mutate).
Plan = tuple[Callable[..., None], tuple[str, ...], Callable[[dict[str, Any]], tuple[Any, ...]]]
_PLANS: dict[type, Plan | None] = {}


def mutate(event: Any, aggregate: Any) -> Any:
    """The aggregate after `event` (None creates it), exactly as `event.mutate(aggregate)`."""
    cls = type(event)
    try:
        plan = _PLANS[cls]
    except KeyError:
        plan = _PLANS[cls] = _plan(cls)
    if plan is None or aggregate is None:
        return event.mutate(aggregate)
    if event.originator_id != aggregate.id:
        raise OriginatorIDError(event.originator_id, aggregate.id)
    next_version = aggregate.version + 1
    if event.originator_version != next_version:
        raise OriginatorVersionError(event.originator_version, next_version)
    func, names, values = plan
    state = event.__dict__
    try:
        kwargs = dict(zip(names, values(state), strict=True))
    except KeyError:  # an attribute left to its class default: the method's default applies
        kwargs = {name: state[name] for name in names if name in state}
    func(aggregate, **kwargs)
    aggregate.version = event.originator_version
    aggregate.modified_on = event.timestamp
    return aggregate


def _plan(cls: type) -> Plan | None:
    func = decorated_funcs.get(cls)
    if (
        not isinstance(func, types.FunctionType)
        or getattr(cls, "mutate", None) is not CanMutateAggregate.mutate
        or getattr(cls, "apply", None) is not DecoratedFuncCaller.apply
        or getattr(cls, "_as_dict", None) is not CanMutateAggregate._as_dict
    ):
        return None
    # DecoratedFuncCaller.apply ends with super().apply(): it must reach the library's no-op.
    mro = cls.__mro__
    after = mro[mro.index(DecoratedFuncCaller) + 1 :]
    if next(c for c in after if "apply" in vars(c)) is not CanMutateAggregate:
        return None
    params = inspect.signature(func).parameters
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
        return None
    # The library passes every attribute named like a parameter (by keyword): so does this.
    names = tuple(name for name in params if name != "self")
    if not names:
        return func, names, lambda _: ()
    getter = operator.itemgetter(*names)
    return func, names, (lambda state: (getter(state),)) if len(names) == 1 else getter
