"""The model's licence at the start of a build: resolved, and checked against the licence policy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..catalog.config import LicencePolicy, load_yaml_model
from ..trust import licence_policy
from ..trust.licence import Licence, resolve

if TYPE_CHECKING:
    from ..sources import ModelSource
    from .spec import BuildSpec


def load_policy(path: Path) -> LicencePolicy:
    """The licence policy in a YAML file; ConfigError naming the file and the field."""
    return load_yaml_model(path, LicencePolicy)


def licence_of(source: ModelSource) -> Licence:
    return resolve(source.path, source.licence_fields)


def adapter_licence_of(source: ModelSource) -> Licence | None:
    """A merged adapter's own licence (its card or LICENSE), or None without an adapter."""
    return None if source.adapter_dir is None else resolve(source.adapter_dir)


def check_licence(spec: BuildSpec, source: ModelSource) -> Licence:
    """The model's licence; LicenceError before any export when the policy refuses it."""
    licence = licence_of(source)
    policy, where = spec.licence_policy, spec.licence_policy_source
    if policy is None and spec.target.license_policy is not None:
        policy, where = spec.target.license_policy, f"target '{spec.target.name}' license_policy"
    licence_policy.check(licence, policy, where or "licence policy", spec.accept_licences)
    adapter = adapter_licence_of(source)
    if adapter is not None and adapter.expression is not None:  # an adapter that declares one: its terms too
        licence_policy.check(adapter, policy, where or "licence policy", spec.accept_licences)
    return licence
