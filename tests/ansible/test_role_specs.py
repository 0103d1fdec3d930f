"""The Ansible roles' variables: defaults/main.yml and meta/argument_specs.yml name the
same keys (as in prometheus-community's roles), every option is typed and described,
and each default has the type its spec declares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "tasks" / "main.yml").is_file())

# argument_specs type -> Python types a default of that type may have (None: unset).
TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "path": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _defaults(role: str) -> dict[str, Any]:
    return _load(ROLES_DIR / role / "defaults" / "main.yml") or {}


def _options(role: str) -> dict[str, Any]:
    specs = _load(ROLES_DIR / role / "meta" / "argument_specs.yml")
    return specs["argument_specs"]["main"]["options"]


def test_the_four_roles_exist() -> None:
    assert ROLES == ["hakuriver_client", "hakuriver_common", "hakuriver_host", "hakuriver_runner"]


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_argument_specs_have_equal_keys(role: str) -> None:
    defaults, options = set(_defaults(role)), set(_options(role))
    assert defaults == options, (
        f"{role}: only in defaults/main.yml: {sorted(defaults - options)}; "
        f"only in meta/argument_specs.yml: {sorted(options - defaults)}"
    )


@pytest.mark.parametrize("role", ROLES)
def test_every_option_is_typed_described_and_matches_its_default(role: str) -> None:
    defaults = _defaults(role)
    for name, spec in _options(role).items():
        assert spec.get("type") in TYPES, f"{role}: {name} has no known type"
        assert spec.get("description"), f"{role}: {name} has no description"
        assert "default" not in spec, f"{role}: {name}: the default lives in defaults/main.yml only"
        value = defaults[name]
        if value is None:
            continue
        assert isinstance(value, TYPES[spec["type"]]) and not (
            spec["type"] in ("int", "float") and isinstance(value, bool)
        ), f"{role}: default of {name} is {value!r}, not a {spec['type']}"
        if "choices" in spec:
            assert value in spec["choices"], f"{role}: default of {name} is not one of its choices"
        if spec["type"] == "list" and "elements" in spec:
            assert all(isinstance(v, TYPES[spec["elements"]]) for v in value), f"{role}: {name} elements"


@pytest.mark.parametrize("role", ROLES)
def test_role_variables_are_namespaced(role: str) -> None:
    prefix = "hakuriver_" if role == "hakuriver_common" else f"{role}_"
    for name in _defaults(role):
        assert name.startswith(prefix), f"{role}: {name} does not start with {prefix}"
