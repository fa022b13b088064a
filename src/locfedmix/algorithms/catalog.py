"""The catalog: each algorithm of the paper's comparison declared as a composition of parts (algorithms/parts.py)."""

import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from locfedmix.algorithms.parts import (
    ClientObjective,
    FedAvg,
    GradMix,
    LocalClassifier,
    Order,
    Parallel,
    Reconstruction,
    Relay,
    Schedule,
    Sequential,
    ServerGradient,
    ServerLayout,
    SmashMix,
    Sync,
)
from locfedmix.errors import UserError


@dataclass(frozen=True)
class Algorithm:
    name: str
    summary: str
    reference: str
    schedule: Schedule
    objective: ClientObjective = ServerGradient()
    mixer: SmashMix | None = None
    server_layout: ServerLayout = ServerLayout.SHARED
    sync: Sync = None
    gradient_mixer: GradMix | None = None
    server_lr_exponent: float = 0.0  # SGLR's SplitLr: the server learning rate is multiplied by N^exponent


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm("sl", "sequential SL: one lower model relayed client to client, server updated every batch",
                  "Gupta & Raskar 2018", Sequential(Order.FIXED), sync=Relay()),
        Algorithm("psl", "parallel SL: all clients each step, one shared server update, no client averaging",
                  "Pal et al. 2021 (SGLR)", Parallel()),
        Algorithm("sfl", "psl + FedAvg of the lower models at the end of each round",
                  "Pal et al. 2021 (SGLR)", Parallel(), sync=FedAvg()),
        Algorithm("sflv1", "SplitFed v1: one server copy per client; FedAvg of copies and lower models each round",
                  "Thapa et al. 2022", Parallel(), server_layout=ServerLayout.PER_CLIENT,
                  sync=FedAvg(average_server_copies=True)),
        Algorithm("sflv2", "SplitFed v2: clients served one after another in random order; FedAvg of lower models",
                  "Thapa et al. 2022", Sequential(Order.SHUFFLED), sync=FedAvg()),
        Algorithm("locsplitfed", "local-loss SL: clients learn from an auxiliary head; no gradient goes down",
                  "Han et al. 2021", Parallel(), objective=LocalClassifier(), sync=FedAvg()),
        Algorithm("locfedmix", "LocFedMix-SL: psl + reconstruction regularizer + SmashMix + FedAvg",
                  "Oh et al. 2022", Parallel(), objective=Reconstruction(), mixer=SmashMix(), sync=FedAvg()),
        Algorithm("sglr", "psl + server learning rate × N^0.5 + GradMix of the cut gradients of half the clients",
                  "Pal et al. 2021 (SGLR)", Parallel(), gradient_mixer=GradMix(), server_lr_exponent=0.5),
        Algorithm("mix2sfl", "SmashMix + GradMix + FedAvg of the lower models (no regularizer)",
                  "Oh et al. 2024 (Mix2SFL)", Parallel(), mixer=SmashMix(), sync=FedAvg(), gradient_mixer=GradMix()),
    ]
}


def algorithm_names() -> list[str]:
    return list(ALGORITHMS)


def register(algorithm: Algorithm) -> Algorithm:
    """Add a declaration to the catalog, after which configs, `run` and `locfedmix algorithms` in this process know
    its name; a name already taken is refused, so that a new declaration never silently replaces a baseline."""
    if algorithm.name in ALGORITHMS:
        raise UserError(f"algorithm '{algorithm.name}' is already registered; choose another name")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", algorithm.name):
        raise UserError(f"algorithm name '{algorithm.name}' must be lower-case letters, digits, '-' or '_' "
                        f"(it names folders and config values)")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


def _ablation(part: str) -> Callable[[Algorithm, bool], Algorithm]:
    """The loc / mix / fed switches (LocFedMix-SL's ablations, and the same parts wherever else they appear):
    off replaces the part with plain psl's."""
    field, off, present = {
        "loc": ("objective", ServerGradient(), lambda a: isinstance(a.objective, Reconstruction)),
        "mix": ("mixer", None, lambda a: a.mixer is not None),
        "fed": ("sync", None, lambda a: isinstance(a.sync, FedAvg)),
    }[part]

    def apply(algo: Algorithm, on: bool) -> Algorithm:
        if not present(algo):
            raise UserError(f"algo.{part} switches a part that algorithm '{algo.name}' does not have")
        return algo if on else replace(algo, **{field: off})

    return apply


def _objective_field(switch: str, field: str) -> Callable[[Algorithm, Any], Algorithm]:
    def apply(algo: Algorithm, value: Any) -> Algorithm:
        if not isinstance(algo.objective, Reconstruction):
            raise UserError(f"algo.{switch} needs the reconstruction regularizer (locfedmix with loc on)")
        return replace(algo, objective=replace(algo.objective, **{field: value}))

    return apply


def _mixer_field(switch: str, field: str) -> Callable[[Algorithm, Any], Algorithm]:
    def apply(algo: Algorithm, value: Any) -> Algorithm:
        if algo.mixer is None:
            raise UserError(f"algo.{switch} needs SmashMix (locfedmix with mix on); algorithm is '{algo.name}'")
        return replace(algo, mixer=replace(algo.mixer, **{field: value}))

    return apply


def _fedavg_field(switch: str, field: str) -> Callable[[Algorithm, Any], Algorithm]:
    def apply(algo: Algorithm, value: Any) -> Algorithm:
        if not isinstance(algo.sync, FedAvg):
            raise UserError(f"algo.{switch} needs FedAvg of client models; algorithm '{algo.name}' has none")
        if field == "every_steps" and isinstance(algo.schedule, Sequential):
            raise UserError(f"algo.sync_every applies to parallel schedules; '{algo.name}' averages per round")
        return replace(algo, sync=replace(algo.sync, **{field: value}))

    return apply


def _gradmix_fraction(algo: Algorithm, value: float) -> Algorithm:
    if algo.gradient_mixer is None:
        raise UserError(f"algo.gradmix_fraction needs GradMix (sglr, mix2sfl); algorithm is '{algo.name}'")
    return replace(algo, gradient_mixer=GradMix(value))


def _server_lr_exponent(algo: Algorithm, value: float) -> Algorithm:
    if not isinstance(algo.schedule, Parallel) or algo.server_layout is not ServerLayout.SHARED:
        raise UserError(f"algo.server_lr_exponent needs one shared server model serving clients in parallel; "
                        f"algorithm is '{algo.name}'")
    return replace(algo, server_lr_exponent=value)


def _handoff(algo: Algorithm, value: int) -> Algorithm:
    if not isinstance(algo.sync, Relay):
        raise UserError(f"algo.handoff_every applies to the relay of sl; algorithm is '{algo.name}'")
    return replace(algo, schedule=replace(algo.schedule, handoff_every=value))


def _server_layout(algo: Algorithm, value: ServerLayout) -> Algorithm:
    if not isinstance(algo.schedule, Parallel) or algo.mixer is not None:
        raise UserError(f"algo.server_layout needs a parallel schedule without SmashMix; algorithm is '{algo.name}'")
    sync = algo.sync
    if isinstance(sync, FedAvg):
        sync = replace(sync, average_server_copies=value is ServerLayout.PER_CLIENT)
    return replace(algo, server_layout=value, sync=sync)


# Applied in this order, so the ablations run before the switches that refine the remaining parts.
SWITCHES: dict[str, Callable[[Algorithm, Any], Algorithm]] = {
    "loc": _ablation("loc"),
    "mix": _ablation("mix"),
    "fed": _ablation("fed"),
    "client_grad": _objective_field("client_grad", "source"),
    "rec_loss": _objective_field("rec_loss", "loss"),
    "gamma": _objective_field("gamma", "gamma"),
    "partners": _mixer_field("partners", "partners"),
    "mix_alpha": _mixer_field("mix_alpha", "alpha"),
    "per_sample_lambda": _mixer_field("per_sample_lambda", "per_sample"),
    "mix_extra_step": _mixer_field("mix_extra_step", "extra_step"),
    "sync_every": _fedavg_field("sync_every", "every_steps"),
    "average_heads": _fedavg_field("average_heads", "average_heads"),
    "gradmix_fraction": _gradmix_fraction,
    "server_lr_exponent": _server_lr_exponent,
    "handoff_every": _handoff,
    "server_layout": _server_layout,
}


def resolve_algorithm(name: str, switches: dict[str, Any]) -> Algorithm:
    """The declared algorithm with the given switches applied; a switch that does not apply is a UserError."""
    if name not in ALGORITHMS:
        raise UserError(f"unknown algorithm '{name}'; choose one of: {', '.join(ALGORITHMS)}")
    algo = ALGORITHMS[name]
    for key, apply in SWITCHES.items():
        if switches.get(key) is not None:
            algo = apply(algo, switches[key])
    return algo
