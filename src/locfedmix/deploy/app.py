"""A Flower app for a locfedmix config: a folder with the pyproject.toml that `flwr run` builds into a Flower App
Bundle, naming locfedmix's ServerApp and ClientApp and holding the config as the app's run config (every key of
it, and the deployment's settings under `deploy`, may then be overridden with `flwr run --run-config`).

    python -m locfedmix.deploy.app my-app --config configs/default.toml --set n_clients=3 --out runs/flower
"""

import argparse
from pathlib import Path
from typing import Any

import tomli_w

from locfedmix.config_files import apply_overrides, read_toml
from locfedmix.config import validate

COMPONENTS = {"serverapp": "locfedmix.deploy.server_app:app", "clientapp": "locfedmix.deploy.client_app:app"}


def write_app(folder: Path, config: dict[str, Any], deploy: dict[str, Any] | None = None,
              name: str = "locfedmix-app") -> Path:
    """The app's folder (new) with its pyproject.toml; `config` is checked first (a mistake is a UserError)."""
    validate(config)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": name, "version": "1.0.0", "description": "locfedmix split learning on Flower",
                    "license": "MIT", "dependencies": ["locfedmix[flower]"]},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "locfedmix", "components": COMPONENTS,
                                  "config": config | {"deploy": {"out": "runs/flower", "overwrite": False}
                                                      | (deploy or {})}}}},
    }
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a new folder for the app")
    parser.add_argument("--config", type=Path, required=True, help="the locfedmix config (TOML)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/flower", help="the server's run directory")
    args = parser.parse_args()
    if args.folder.exists():
        parser.error(f"{args.folder} exists; name a new folder")
    tree = apply_overrides(read_toml(args.config), args.settings)
    tree.pop("sweep", None)
    print(write_app(args.folder, tree, {"out": args.out}))


if __name__ == "__main__":
    main()
