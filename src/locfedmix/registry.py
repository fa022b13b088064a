"""Names that installed packages add through Python entry points (groups `locfedmix.models`, `locfedmix.datasets`,
found the way pytest finds plugins), and the model a Python caller hands to one run.

A TOML config only ever names what is registered: it never carries a module path of its own to import, so configs
stay data. Listing the names reads package metadata only; a package is imported when its name is used.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from locfedmix.errors import UserError

MODELS = "locfedmix.models"
DATASETS = "locfedmix.datasets"
_GIVEN: dict[str, dict[str, Any]] = {MODELS: {}, DATASETS: {}}  # handed to a run from Python, for that run only


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def registered_names(group: str) -> list[str]:
    """The names installed packages register in `group`, and those handed to the current run, sorted."""
    return sorted({*_entry_points(group), *_GIVEN[group]})


def load(group: str, name: str) -> Any:
    """What `name` stands for in `group`: the object a run was handed, or the entry point's object, imported now."""
    if name in _GIVEN[group]:
        return _GIVEN[group][name]
    found = _entry_points(group).get(name)
    if found is None:
        raise UserError(f"{name!r} is not registered in entry-point group {group}; registered: "
                        f"{', '.join(registered_names(group)) or 'none'}")
    try:
        return found.load()
    except Exception as err:  # the package is broken or half installed: say which one, in one line
        raise UserError(f"{group} entry point {name} = {found.value} cannot be loaded: {err}") from None


@contextmanager
def given(group: str, name: str, value: Any) -> Iterator[str]:
    """`value` registered under `name` in `group` while the block runs (the model passed to `locfedmix.run`)."""
    _GIVEN[group][name] = value
    try:
        yield name
    finally:
        del _GIVEN[group][name]
