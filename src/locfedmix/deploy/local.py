"""A Flower deployment on this machine: one SuperLink and one SuperNode per client, each its own process, secure
as on real machines (TLS with a local certificate authority, SuperNode authentication) unless asked otherwise.
It is how the tests and benchmarks/deployment.py run the Deployment Engine, and a local trial before using real
machines (docs/deploy.md shows the same commands by hand).

    with LocalFederation(folder, nodes=3) as federation:
        federation.run("examples/flower", {"algorithm": "sfl", "deploy.out": "runs/flower"})
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

from locfedmix.deploy.credentials import write_credentials
from locfedmix.errors import DeploymentError


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class LocalFederation:
    """`nodes` SuperNodes (node k is client k: `partition-id=k`) and their SuperLink, with Flower's home, the
    credentials and every process's log under `folder` (a new folder). With `simulation`, Flower's Simulation
    Engine instead: one SuperLink whose ClientApps run as simulated nodes (Ray actors), no TLS."""

    def __init__(self, folder: Path, nodes: int, insecure: bool = False, simulation: bool = False):
        self.folder, self.n, self.simulation = Path(folder), nodes, simulation
        self.insecure = insecure or simulation
        self.port = free_port()
        self.bin = Path(sys.executable).parent  # Flower's commands start one another by name: this env's first
        self.env = os.environ | {"FLWR_HOME": str(self.folder / "home"), "FLWR_DISABLE_UPDATE_CHECK": "1",
                                 "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.processes: dict[str, subprocess.Popen] = {}
        self.credentials: dict[str, Path] = {}

    def __enter__(self) -> "LocalFederation":
        (self.folder / "home").mkdir(parents=True)
        if not self.insecure:
            self.credentials = write_credentials(self.folder / "credentials", self.n)
        self._connection()
        self.start("superlink", self._superlink_command())
        self._wait(lambda: listening(self.port), "the SuperLink to listen")
        if not self.insecure:
            for k in range(self.n):
                self.flwr("supernode", "register", str(self.credentials[f"node-{k}.pub"]), "local")
        for k in range(0 if self.simulation else self.n):
            self.start_node(k)
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    def _connection(self) -> None:
        connection: dict[str, Any] = {"address": f"127.0.0.1:{self.port}"}
        connection |= {"insecure": True} if self.insecure else {"root-certificates": str(self.credentials["ca"])}
        config = {"superlink": {"default": "local", "local": connection}}
        (self.folder / "home" / "config.toml").write_text(tomli_w.dumps(config))

    def _security(self) -> list[str]:
        return ["--insecure"] if self.insecure else []

    def _superlink_command(self) -> list[str]:
        command = [str(self.bin / "flower-superlink"), "--port", str(self.port),
                   "--disable-runtime-dependency-installation", *self._security()]
        if self.simulation:
            return command + ["--simulation"]
        if not self.insecure:
            c = self.credentials
            command += ["--ssl-ca-certfile", str(c["ca"]), "--ssl-certfile", str(c["cert"]), "--ssl-keyfile",
                        str(c["key"]), "--enable-supernode-auth"]
        return command

    def start(self, name: str, command: list[str]) -> None:
        log = open(self.folder / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                cwd=self.folder)

    def start_node(self, k: int) -> None:
        """SuperNode k (again, after `kill_node`): client k, its runtime API on a port of its own, keeping its saved
        states (for a resumed run) in `folder/node-k`."""
        command = [str(self.bin / "flower-supernode"), "--superlink", f"127.0.0.1:{self.port}", "--port",
                   str(free_port()), "--node-config",
                   f"partition-id={k} num-partitions={self.n} state-dir='{self.folder / f'node-{k}'}'",
                   *self._security()]
        if not self.insecure:
            command += ["--root-certificates", str(self.credentials["ca"]), "--auth-supernode-private-key",
                        str(self.credentials[f"node-{k}"])]
        self.start(f"supernode-{k}", command)

    def kill_node(self, k: int) -> None:
        """SuperNode k dies at once (SIGKILL), as a machine that loses power."""
        process = self.processes.pop(f"supernode-{k}")
        process.kill()
        process.wait()

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.bin / "flwr"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.folder)
        if done.returncode:
            raise DeploymentError(f"flwr {' '.join(args)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done

    def run(self, app: str | Path, run_config: dict[str, Any] | None = None, timeout: float = 1800) -> str:
        """Run the Flower app at `app` until it ends, with these run-config overrides (keys its pyproject.toml
        declares); returns its log."""
        process = self.launch(app, run_config)
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise DeploymentError(f"the run did not end within {timeout:g} s (logs in {self.folder})") from None
        if process.returncode:
            raise DeploymentError(f"flwr run failed: {out[-2000:]}")
        return out

    def launch(self, app: str | Path, run_config: dict[str, Any] | None = None) -> subprocess.Popen:
        """Start the Flower app at `app` (`flwr run --stream`, its log on the returned process's stdout)."""
        args = [str(self.bin / "flwr"), "run", str(Path(app).resolve()), "local", "--stream"]
        if self.simulation:
            args += ["--federation-config", f"num-supernodes={self.n}"]
        if run_config:
            overrides = self.folder / f"run-config-{len(list(self.folder.glob('run-config-*')))}.toml"
            overrides.write_text(tomli_w.dumps(run_config))
            args += ["--run-config", str(overrides)]
        return subprocess.Popen(args, env=self.env, cwd=self.folder, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def log(self, name: str) -> str:
        """What process `name` (superlink, supernode-<k>) has written so far."""
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait(self, ready, what: str, timeout: float = 60) -> None:
        started = time.perf_counter()
        while not ready():
            if time.perf_counter() - started > timeout:
                raise DeploymentError(f"timed out waiting for {what} (logs in {self.folder})")
            time.sleep(0.2)
