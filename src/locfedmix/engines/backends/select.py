"""Which client pool a run gets: the stacked pool where many clients step together with tiny batches (any batch on a
GPU), the loop otherwise, unless the config forces one."""

import torch

from locfedmix.config import Config, EngineKind
from locfedmix.engines.backends.looped import LoopClients
from locfedmix.engines.backends.memory import ActivationBudget
from locfedmix.engines.backends.pool import Pool
from locfedmix.engines.backends.stacked import StackedClients

# On the CPU, per-client batches up to this size run faster stacked than looped (measured on 2 cores at 100 clients
# with backends/stacked_layers.py: at 4 samples the stacked pool wins 1.13x for psl and 1.3x for locfedmix, at 8 the
# loop wins 1.2x and 1.4x). On a GPU the loop is bound by kernel launches, so many clients stepping together always
# run stacked (benchmarks/throughput.py).
STACKED_MAX_BATCH = 4


def build_pool(config: Config, parallel: bool, decoder: bool, lower: torch.nn.Module, head: torch.nn.Module | None,
               typical_batch: int, count: int, first: int = 0) -> Pool:
    """`count` clients from id `first` on, of the federation's `config.n_clients`; `parallel`: the clients step
    together; `decoder`: the head reconstructs the input."""
    kind = config.engine.kind
    if kind is EngineKind.AUTO:
        on_gpu = next(lower.parameters()).device.type == "cuda"
        stack = parallel and config.n_clients > 1 and (on_gpu or typical_batch <= STACKED_MAX_BATCH)
        kind = EngineKind.VECTORIZED if stack else EngineKind.LOOP
    budget = ActivationBudget(config.engine.activation_memory_mb, lower, head)
    if kind is EngineKind.VECTORIZED:
        return StackedClients(lower, head, count, config.client_optimizer, config.engine.chunk_clients, budget,
                              decoder, first, config.n_clients, config.seed)
    return LoopClients(lower, head, count, config.client_optimizer, budget, config.engine.layout, first,
                       config.n_clients, config.seed)
