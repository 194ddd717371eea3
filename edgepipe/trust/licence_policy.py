"""A licence policy (``allow``, ``deny``, ``require_acceptance``) checked before a build starts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import LicenceError
from .licence import NONE, Licence, _licensing, canonical

if TYPE_CHECKING:  # validated data, read by catalog/ (engine/licences.py loads a policy file)
    from ..catalog.config import LicencePolicy


def _ids(values: list[str] | None) -> set[str]:
    return {v if v == NONE else canonical(v) for v in values or []}


def _refusal(licence_id: str, policy: LicencePolicy, accepted: set[str]) -> str | None:
    """Why ``licence_id`` may not ship under ``policy``, or None."""
    if licence_id in _ids(policy.deny):
        return "is denied by the policy (deny)"
    if licence_id in accepted:
        return None
    if licence_id in _ids(policy.require_acceptance):
        return "needs acceptance (require_acceptance)"
    if policy.allow is not None and licence_id not in _ids(policy.allow):
        return "is not in the policy's allow list"
    return None


def _first_refusal(expression: str, policy: LicencePolicy, accepted: set[str]) -> tuple[str, str] | None:
    """An OR passes when one side does, an AND when every side does: the first refused id and why."""
    from license_expression import AND, OR

    if expression.startswith("LicenseRef-edgepipe-") or expression == NONE:
        why = _refusal(expression, policy, accepted)
        return (expression, why) if why else None

    def walk(node: Any) -> tuple[str, str] | None:
        if isinstance(node, AND):
            return next((r for r in map(walk, node.args) if r), None)
        if isinstance(node, OR):
            refusals = [walk(arg) for arg in node.args]
            return None if any(r is None for r in refusals) else refusals[0]
        key = str(getattr(node, "key", node))
        why = _refusal(key, policy, accepted)
        return (key, why) if why else None

    return walk(_licensing().parse(expression))


def check(licence: Licence, policy: LicencePolicy | None, source: str, accept: Iterable[str] = ()) -> None:
    """LicenceError, one line naming the licence and the rule, unless ``policy`` lets the model ship."""
    if policy is None:
        return
    accepted = {canonical(a) for a in accept}
    refused = _first_refusal(licence.expression or NONE, policy, accepted)
    if refused is None:
        return
    licence_id, why = refused
    if licence.expression is None:
        raise LicenceError(
            f"the model declares no licence ({NONE}), which {why} ({source}); declare one in its model card "
            f"or add {NONE} to the policy"
        )
    hint = "" if "deny" in why else f"; pass --accept-license {licence.declared or licence_id} to accept it"
    which = (
        f"licence {licence.shown}" if licence_id == licence.expression else f"licence {licence_id} ({licence.shown})"
    )
    raise LicenceError(f"the model's {which} {why} ({source}){hint}")
