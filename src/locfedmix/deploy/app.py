"""A Flower app for a locfedmix config: a folder with the pyproject.toml that `flwr run` builds into a Flower App
Bundle, naming locfedmix's ServerApp and ClientApp and holding the config as the app's run config (every key of
it, and the deployment's settings under `deploy`, may then be overridden with `flwr run --run-config`).

    locfedmix deploy my-app --config configs/default.toml --set n_clients=3 --out runs/flower
"""

from pathlib import Path
from typing import Any

import tomli_w

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
                                  "config": config | {"deploy": {"out": "runs/flower", "overwrite": False,
                                                                 "resume": False} | (deploy or {})}}}},
    }
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project))
    return folder
