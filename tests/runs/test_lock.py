"""The lock file that `make setup` and CI install from: exact versions, and every one of
them allowed by pyproject.toml's own ranges (a lock that contradicts them would fail to
install, or install what the project does not declare)."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import PROJECT_ROOT


def _locked() -> dict[str, str]:
    pins = {}
    for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_every_declared_dependency_is_locked_within_its_range() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [
        spec for specs in project["optional-dependencies"].values() for spec in specs
    ]
    pins = _locked()
    own = canonicalize_name(project["name"])  # an extra that names another (dev -> steer)
    for spec in declared:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        if name == own:
            assert requirement.extras <= set(project["optional-dependencies"]), spec
            continue
        assert name in pins, f"{requirement.name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {spec!r}: "
            "run `make lock`"
        )
