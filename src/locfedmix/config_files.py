"""Config files and --set overrides read as data, never as code (SECURITY.md, section 2): TOML through tomllib,
each override value as one TOML literal."""

import tomllib
from pathlib import Path
from typing import Any

from locfedmix.errors import UserError
from locfedmix.files import read_bounded

# Far beyond any experiment file (a 10,000-cell sweep fits in a few kB); a larger file is not a config.
MAX_CONFIG_BYTES = 2**20


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` → (["a", "b"], value). The value is data, never code: it is read as one TOML literal (number,
    bool, quoted string, array, inline table), and anything that is not one (a bare word, `__import__(...)`, a YAML
    tag) stays the plain string the user typed. TOML that smuggles in further keys on extra lines is refused."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set '{text}' is not key=value")
    raw = raw.strip()
    try:
        document = tomllib.loads(f"v = {raw}")
    except (tomllib.TOMLDecodeError, RecursionError):  # tomllib recurses once per nesting level
        return key.strip().split("."), raw
    if document.keys() != {"v"}:
        raise UserError(f"--set {text!r}: the value must be one TOML literal, not further lines of TOML")
    return key.strip().split("."), document["v"]


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    tree = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tree.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return tree


def read_toml(path: str | Path) -> dict[str, Any]:
    """The config file as plain data (tomllib builds only dicts, lists, strings, numbers, booleans and dates); it must
    be a regular file of at most MAX_CONFIG_BYTES, and every way it can be unreadable ends as a UserError naming it."""
    if not Path(path).exists():
        raise UserError(f"config file '{path}' not found")
    raw = read_bounded(Path(path), MAX_CONFIG_BYTES, "config file")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"config file '{path}' is not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"config file '{path}' is not UTF-8 text (byte {err.start}); TOML must be UTF-8") from None
    except RecursionError:
        raise UserError(f"config file '{path}' nests arrays or tables too deeply") from None
