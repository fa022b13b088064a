"""A run assembled from its config: the models, one client pool (backends/), the server, one transport
(transports/) and the run's setup and state (flow/state.py). The only module that names all three rooms."""

import copy
import math

import numpy as np
import torch
from torch import nn

from locfedmix.algorithms.catalog import Algorithm
from locfedmix.algorithms.objectives import build_head
from locfedmix.config import Config, OptimizerConfig
from locfedmix.engines.backends.optimizers import build_optimizer
from locfedmix.engines.backends.remote import RemoteClients
from locfedmix.engines.backends.select import build_pool
from locfedmix.engines.flow.interfaces import Transport
from locfedmix.engines.flow.participation import Participation
from locfedmix.engines.flow.recipe import Recipe
from locfedmix.engines.flow.server import Server
from locfedmix.engines.flow.state import Federation, RunState, Setup
from locfedmix.engines.transports.collectives import Collectives
from locfedmix.engines.transports.distributed import Shard
from locfedmix.engines.transports.in_process import InProcess
from locfedmix.latency.flops import count_flops
from locfedmix.latency.ledger import Kind, Ledger, module_bytes
from locfedmix.models import SplitModel, build_split_model
from locfedmix.models.dropout import set_key
from locfedmix.privacy.defences import Defence
from locfedmix.rng import seeded_torch


def build_federation(
    config: Config, algo: Algorithm, input_shape: tuple[int, int, int], n_classes: int, sizes: list[int],
    device: torch.device = torch.device("cpu"), shard: Shard | None = None, link: Transport | None = None,
) -> Federation:
    """All clients share one seeded initial lower model (and head); the server starts from the matching upper.
    The models are initialised on the CPU and then moved, so every device starts from the same weights. With a
    shard (a distributed run), this rank holds only its own clients and talks to the others by collectives; with a
    `link` (a deployment), this process is the server alone and every client answers through the link."""
    recipe = Recipe.of(algo)
    model, head = initial_models(config, algo, input_shape, n_classes)
    flops = count_flops(model.lower, model.upper, head, input_shape)
    for module in (model.lower, model.upper, head):
        if module is not None:
            module.to(device)
    typical_batch = min(config.batch_size, int(np.median(sizes)))
    count, first = (config.n_clients, 0) if shard is None else (shard.size, shard.start)
    if link is not None:
        clients, transport = RemoteClients(config.n_clients, head is not None), link
    else:
        clients = build_pool(config, recipe.parallel, recipe.decoder, model.lower, head, typical_batch, count, first)
        transport = InProcess() if shard is None else Collectives(shard, model.cut_shape, device)
    server = build_server(algo, recipe, model, config.n_clients, config.server_optimizer, config.seed)
    model_bytes = {Kind.LOWER: module_bytes(model.lower), Kind.HEAD: module_bytes(head) if head is not None else 0}
    smashed = math.prod(model.cut_shape) * next(model.lower.parameters()).element_size()
    participation = Participation.from_config(config.participation, config.n_clients, config.seed)
    defence = Defence(config.privacy.clip, config.privacy.noise_multiplier, config.privacy.nopeek, config.seed)
    setup = Setup(algo, recipe, sizes, config.seed, flops, config.latency.resolved_profile(), model.cut_shape,
                  model_bytes, smashed, participation, defence, config.client_optimizer.on_sync == "reset")
    return Federation(setup, RunState(clients, server, Ledger(config.latency.label_bytes)), transport)


def initial_models(config: Config, algo: Algorithm, input_shape: tuple[int, ...],
                   n_classes: int) -> tuple[SplitModel, nn.Module | None]:
    """The split model and the client's head (or None) every client and the server start from: drawn from the seed
    alone, so a client on another machine builds the very weights the server expects."""
    with seeded_torch(config.seed, "init"):
        model = build_split_model(config.model, input_shape, n_classes, config.cut or None)
        head = build_head(algo.objective, model.cut_shape, input_shape, n_classes, model.head, model.decoder)
    return model, head


def build_server(algo: Algorithm, recipe: Recipe, model: SplitModel, n_clients: int,
                 optimizer: OptimizerConfig, seed: int = 0) -> Server:
    """The upper model(s) with their optimizers; SGLR's SplitLr scales the server learning rate by N^exponent.
    Each copy of the upper model draws its dropout masks from a key of its own."""
    copies = n_clients if recipe.server_copies else 1
    uppers = [copy.deepcopy(model.upper) for _ in range(copies)]
    for i, upper in enumerate(uppers):
        set_key(upper, seed, "upper", i)
    if algo.server_lr_exponent:
        optimizer = optimizer.model_copy(update={"lr": optimizer.lr * n_clients ** algo.server_lr_exponent})
    return Server(uppers, [build_optimizer(list(u.parameters()), optimizer) for u in uppers], recipe.server_copies)
