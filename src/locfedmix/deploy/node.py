"""A client on its own machine: its data, its lower model (and head) and optimizer, and the client half of every
message the server sends. The state between messages is the pool's state_dict, kept in the node's Flower context;
a step's forward is computed again when its cut gradient arrives (the graph does not outlive a message), which
costs one more forward pass and gives the very numbers of one process."""

import copy
import io
import zipfile
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from locfedmix.api import federate
from locfedmix.config import Config
from locfedmix.errors import DataError
from locfedmix.files import read_bounded
from locfedmix.engines.assemble import initial_models
from locfedmix.engines.backends.looped import LoopClients
from locfedmix.engines.backends.memory import ActivationBudget
from locfedmix.engines.flow.interfaces import Weights
from locfedmix.engines.transports.flower_records import fingerprint
from locfedmix.privacy.defences import Defence


@dataclass
class NodeData:
    """One client's training samples (in the order the server's positions index) and the evaluation sets it
    scores (split name → inputs, labels): shards of the evaluation sets every client shares for a partition of a
    dataset, its own sets in whole for its own data."""

    x: torch.Tensor
    y: torch.Tensor
    evaluation: dict[str, tuple[torch.Tensor, torch.Tensor]]
    n_classes: int
    own: bool = False  # the node's own files (each client scores its own evaluation sets), not a partition

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def histogram(self) -> list[int]:
        return np.bincount(self.y.numpy(), minlength=self.n_classes).tolist()


def partition_data(config: Config, client: int) -> NodeData:
    """A demonstration node's data: partition `client` of the config's dataset, cut exactly as a run in one process
    cuts it (validation hold-out, standardization, partitioner), with the evaluation sets in that run's order.
    Kept for the next message where the ClientApp's process lives on (Flower's Simulation Engine)."""
    return _partition_data(config.model_dump_json(), client)


@functools.lru_cache(maxsize=4)
def _partition_data(config_json: str, client: int) -> NodeData:
    config = Config.model_validate_json(config_json)
    data = federate(config)
    ds = data.dataset
    rows = torch.as_tensor(data.client_indices[client])
    evaluation = {"validation": (ds.x_train[data.val_indices], ds.y_train[data.val_indices]),
                  "test": (ds.x_test[data.test_order], ds.y_test[data.test_order])}
    return NodeData(ds.x_train[rows], ds.y_train[rows], evaluation, ds.n_classes)


NODE_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")


def own_data(path: Path, config: Config) -> NodeData:
    """A node's own data: a NumPy .npz file (read with allow_pickle=False, at most `data.memory_mb`) holding
    x_train and y_train, and its own evaluation sets x_test/y_test and optionally x_val/y_val. The arrays are used
    as given (no standardization: only the node knows its data); labels are integers 0..n_classes-1."""
    raw = read_bounded(path, int(config.data.memory_mb * 2**20), "node data", DataError)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in NODE_ARRAYS if name in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DataError(f"node data '{path}' is not a NumPy .npz file of arrays: {err}") from None
    missing = [name for name in NODE_ARRAYS[:4] if name not in arrays]
    if missing:
        raise DataError(f"node data '{path}' lacks {', '.join(missing)}; it needs x_train, y_train, x_test, y_test")
    x = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in arrays.items() if k.startswith("x_")}
    y = {k: torch.as_tensor(v, dtype=torch.int64) for k, v in arrays.items() if k.startswith("y_")}
    splits = (("test", "test"), ("validation", "val"))
    evaluation = {split: (x[f"x_{short}"], y[f"y_{short}"]) for split, short in splits if f"x_{short}" in x}
    classes = int(max(int(t.max()) for t in y.values() if len(t)) + 1)
    return NodeData(x["x_train"], y["y_train"], evaluation, classes, own=True)


class ClientNode:
    """Client `client` of `config.n_clients`: a loop pool of one, built from the seed as every other client and
    the server build theirs."""

    def __init__(self, config: Config, client: int, data: NodeData):
        self.config, self.client, self.data = config, client, data
        self.algo = config.resolved_algorithm()
        model, head = initial_models(config, self.algo, data.input_shape, data.n_classes)
        self.cut_shape = model.cut_shape
        budget = ActivationBudget(config.engine.activation_memory_mb, model.lower, head)
        self.pool = LoopClients(model.lower, head, 1, config.client_optimizer, budget, config.engine.layout,
                                client, config.n_clients, config.seed)
        privacy = config.privacy
        self.defence = Defence(privacy.clip, privacy.noise_multiplier, privacy.nopeek, config.seed)

    def batch(self, positions: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return {self.client: (self.data.x[positions], self.data.y[positions])}

    def upload(self, positions: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's upload (smashed data, with the defence applied) and labels. Nothing is kept: the forward
        pass is computed again with the cut gradient, so that BatchNorm's running statistics move once."""
        batch = self.batch(positions)
        smashed = self.defence.protect(self.pool.forward(batch), step)
        return smashed.groups[0][1].squeeze(0).detach(), batch[self.client][1]

    def step(self, positions: torch.Tensor, step: int, cut_grad: torch.Tensor | None) -> None:
        """The client half of the step: forward again, back-propagate the cut gradient (if one came) and the local
        objective, one optimizer step."""
        batch = self.batch(positions)
        smashed = self.defence.protect(self.pool.forward(batch), step)
        grads = {} if cut_grad is None else {self.client: cut_grad}
        self.pool.backward_and_step(self.algo.objective, smashed, grads, batch, self.defence.nopeek)

    def weights(self, heads: bool) -> Weights:
        """The lower model's (and, with `heads`, the head's) weights, named `lower/...` and `head/...`."""
        out = {f"lower/{k}": v for k, v in self.pool.lower(self.client).state_dict().items()}
        if heads and self.pool.has_head:
            out |= {f"head/{k}": v for k, v in self.pool.head(self.client).state_dict().items()}
        return out

    def expected(self, heads: bool) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What `weights` holds: every name with its shape and dtype (what a load must bring)."""
        return {k: (tuple(v.shape), v.dtype) for k, v in self.weights(heads).items()}

    def load(self, weights: Weights) -> None:
        """Take the weights `weights` names: the lower model's, and the head's where they are given."""
        lower = {k.removeprefix("lower/"): v for k, v in weights.items() if k.startswith("lower/")}
        head = {k.removeprefix("head/"): v for k, v in weights.items() if k.startswith("head/")}
        self.pool.assign(lower, head or None)

    def digest(self) -> str:
        """A fingerprint of the lower weights: the server compares clients' models without receiving them."""
        return fingerprint(self.pool.lower(self.client).state_dict())

    @torch.no_grad()
    def inference(self, split: str, start: int, stop: int, batch_size: int, step: int,
                  state: Weights | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The smashed data of rows start..stop of an evaluation split, in eval mode and in the server's
        evaluation batches, with the defence a client applies to every upload; `state` replaces the lower weights
        (the relay's model after its holder failed)."""
        lower = self.pool.lower(self.client)
        if state is not None:
            lower = copy.deepcopy(lower)
            lower.load_state_dict(state)
        x, y = self.data.evaluation[split]
        defended = self.defence.inference(f"{split}-client{self.client}", step)
        mode = lower.training
        lower.eval()
        chunks = []
        for first in range(start, stop, batch_size):
            smashed = lower(x[first:min(first + batch_size, stop)])
            chunks.append(defended(smashed) if defended is not None else smashed)
        lower.train(mode)
        return torch.cat(chunks), y[start:stop]


def upper_scores(upper: torch.nn.Module, smashed: torch.Tensor, labels: torch.Tensor,
                 batch_size: int) -> tuple[float, float]:
    """Mean CE and accuracy of the server's upper model on a client's evaluation uploads, in the batches the
    client computed them in (evaluation.evaluate's numbers, the lower half run on the client)."""
    mode = upper.training
    upper.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(labels), batch_size):
            logits = upper(smashed[first:first + batch_size])
            target = labels[first:first + batch_size]
            loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(1) == target).sum())
    upper.train(mode)
    return loss / max(len(labels), 1), correct / max(len(labels), 1)
