"""The experiment configuration: one frozen, validated tree loaded once at the edge (TOML file + --set overrides)."""

from dataclasses import replace
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from locfedmix.algorithms.catalog import ALGORITHMS, resolve_algorithm
from locfedmix.algorithms.parts import GradientSource, ReconstructionLoss, ServerLayout
from locfedmix.errors import UserError
from locfedmix.latency.model import PROFILES, Profile


class _Section(BaseModel):
    # Strict: a TOML `true` is not the integer 1, nor "3" the number 3 (--set values are TOML literals, so
    # `--set rounds=3` is the integer 3); only enum fields take their names as strings. No float may be infinite.
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False, strict=True, allow_inf_nan=False)


class OptimizerName(StrEnum):
    SGD = "sgd"
    ADAM = "adam"


class OptimizerConfig(_Section):
    name: OptimizerName = Field(OptimizerName.ADAM, strict=False)
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class ClientOptimizerConfig(OptimizerConfig):
    on_sync: Literal["keep", "reset"] = Field("keep", description="a client's optimizer state when FedAvg or the "
                                                                  "relay replaces its weights: kept, or rebuilt")


class DataConfig(_Section):
    """Where the data live, the validation hold-out, and the partitioner's parameters under Flower Datasets' names."""

    dir: str | None = None
    val_fraction: float = Field(0.1, ge=0, lt=1)
    normalize: bool = Field(True, description="standardize each channel by the training split's mean and std "
                                              "(data/normalize.py); false keeps pixels in [0, 1]")
    partition_by: Literal["label"] = Field("label", description="our datasets have one target column, 'label'")
    alpha: float = Field(0.5, gt=0, description="dirichlet: the concentration (smaller = more skewed)")
    min_partition_size: int = Field(1, ge=1, description="dirichlet: redraw until every client has this many")
    num_classes_per_partition: int = Field(2, ge=1, description="pathological: classes held by each client")
    class_assignment_mode: Literal["balanced", "random", "deterministic", "first-deterministic"] = Field(
        "balanced", description="pathological: how each client's classes are picked (data/partition.py)")
    num_shards_per_partition: int = Field(2, ge=1, description="shards: shards dealt to each client")
    shard_size: int = Field(0, ge=0, description="shards: samples per shard; 0 = all data in equal shards")
    memory_mb: float = Field(4096, gt=0, description="a user's data whose inputs exceed this are read per step")
    workers: int = Field(2, ge=0, description="processes reading ahead when data are read per step (0 = none)")


# Keys renamed to Flower Datasets' names; a config that still uses one is told the new name instead of "unknown key".
RENAMED_KEYS = {
    "data.dirichlet_alpha": "data.alpha",
    "data.min_samples": "data.min_partition_size",
    "data.classes_per_client": "data.num_classes_per_partition (with partition = 'pathological')",
}


class LogConfig(_Section):
    """Optional logs beside metrics.csv; events.jsonl is always written."""

    tensorboard: bool = Field(False, description="write TensorBoard scalars into <run>/tensorboard")


class AlgoSwitches(_Section):
    """Switches on the declared algorithm's parts; unset (None) keeps the algorithm's default (catalog.SWITCHES)."""

    loc: bool | None = None
    mix: bool | None = None
    fed: bool | None = None
    client_grad: GradientSource | None = Field(None, strict=False)
    rec_loss: ReconstructionLoss | None = Field(None, strict=False)
    gamma: float | None = Field(None, ge=0)
    partners: int | None = Field(None, ge=1)
    mix_alpha: float | None = Field(None, gt=0)
    per_sample_lambda: bool | None = None
    mix_extra_step: bool | None = None
    sync_every: int | None = Field(None, ge=0)
    average_heads: bool | None = None
    gradmix_fraction: float | None = Field(None, ge=0, le=1)
    server_lr_exponent: float | None = Field(None, ge=0, le=3)
    handoff_every: int | None = Field(None, ge=0)
    server_layout: ServerLayout | None = Field(None, strict=False)


class LatencyConfig(_Section):
    """The device/link profile of the latency model (a named profile, any parameter overridable) and the target
    accuracy whose simulated time-to-reach each run reports."""

    profile: str = "phone-lte"
    client_flops: float | None = Field(None, gt=0)
    server_flops: float | None = Field(None, gt=0)
    uplink_bps: float | None = Field(None, gt=0)
    downlink_bps: float | None = Field(None, gt=0)
    link_delay_s: float | None = Field(None, ge=0)
    label_bytes: int = Field(8, ge=1, le=8)
    target_accuracy: float = Field(0.8, gt=0, le=1)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str) -> str:
        if name not in PROFILES:
            raise ValueError(f"unknown latency profile '{name}'; choose one of: {', '.join(PROFILES)}")
        return name

    def resolved_profile(self) -> Profile:
        overrides = self.model_dump(include=set(Profile.__dataclass_fields__), exclude_none=True)
        return replace(PROFILES[self.profile], **overrides)


class EngineKind(StrEnum):
    AUTO = "auto"  # stacked where many clients step together with tiny batches, the loop otherwise
    LOOP = "loop"  # one module and one torch optimizer per client
    VECTORIZED = "vectorized"  # all clients stacked along a client dimension, run with torch.func.vmap


class Layout(StrEnum):
    AUTO = "auto"  # channels-last for convolutional lower models in the loop pool on the CPU, contiguous elsewhere
    CHANNELS_LAST = "channels_last"
    CONTIGUOUS = "contiguous"


class EngineConfig(_Section):
    kind: EngineKind = Field(EngineKind.AUTO, strict=False)
    layout: Layout = Field(Layout.AUTO, strict=False,
                           description="memory layout of the loop pool's lower models and images")
    chunk_clients: int = Field(256, ge=1, description="clients per vmap call in the vectorized engine")
    activation_memory_mb: float = Field(
        2048, ge=0, allow_inf_nan=False,
        description="client activations a step may keep; beyond it the clients' forward is recomputed in backward")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="auto = the first CUDA device if there is one, else cpu")
    distributed: bool = Field(False, description="shard the clients over the processes torchrun starts")
    timeout_s: float = Field(300.0, gt=0, description="a collective waiting longer than this fails the run")
    keep_host_memory: bool = Field(
        True, description="keep freed host memory for the next step instead of returning it to the OS "
                          "(glibc; engines/backends/host_memory.py)")
    flush_denormals: bool = Field(
        True, description="while training, compute with floats below the smallest normal one as zero on the CPU, "
                          "where they are many times slower (engines/backends/denormals.py)")
    threads: int = Field(
        0, ge=0, le=1024, description="intra-op CPU threads; 0 = OMP_NUM_THREADS where set, else the usable cores "
                                      "less those other processes keep busy, chosen when the run starts "
                                      "(engines/backends/threads.py)")


class ParticipationConfig(_Section):
    """Partial participation and faults (issue #7; the paper assumes every client takes part in every round).

    fraction: the share of the N clients drawn afresh each round (max(1, round(fraction·N)) of them); dropout: the
    probability that a participating client fails in a round, at one of its steps drawn uniformly; stragglers: the
    share of clients whose compute and link are `straggler_slowdown` times slower (drawn once per run); deadline_s:
    seconds from a step's start after which the server stops waiting for uploads (0 = it always waits).
    The defaults are today's federation: everyone, always, at full speed.
    """

    fraction: float = Field(1.0, gt=0, le=1)
    dropout: float = Field(0.0, ge=0, le=1)
    stragglers: float = Field(0.0, ge=0, le=1)
    straggler_slowdown: float = Field(4.0, ge=1, allow_inf_nan=False)
    deadline_s: float = Field(0.0, ge=0, allow_inf_nan=False)


class EvalConfig(_Section):
    batch_size: int = Field(32, ge=1, description="small batches run fastest on CPU (measured)")
    every: int = Field(1, ge=1, description="evaluate every this many rounds (and after the last)")


class PrivacyConfig(_Section):
    """Client-side defences of the smashed data (privacy/defences.py, docs/privacy.md); all off by default."""

    clip: float | None = Field(None, gt=0, allow_inf_nan=False,
                               description="per-sample L2 bound C on the smashed data before upload")
    noise_multiplier: float = Field(0.0, ge=0, allow_inf_nan=False,
                                    description="σ: Gaussian noise of std σ·C added after clipping")
    nopeek: float = Field(0.0, ge=0, allow_inf_nan=False,
                          description="α: weight of NoPeek's dCor(x, s) in the client's local loss")

    @model_validator(mode="after")
    def _noise_needs_clip(self) -> "PrivacyConfig":
        if self.noise_multiplier > 0 and self.clip is None:
            raise ValueError(f"noise_multiplier={self.noise_multiplier} needs clip "
                             f"(the noise std is multiplier × clip)")
        return self


class LeakageConfig(_Section):
    """What the smashed data reveal (privacy/leakage.py): dCor(x, s) and a model-inversion attack by the server,
    measured after the last round (and after every evaluated round with every_round). Off by default."""

    enabled: bool = False
    every_round: bool = False
    aux_samples: int = Field(1000, ge=1, description="the attacker's own data, outside every client's share")
    samples_per_client: int = Field(100, ge=4, description="client samples scored per client (dCor, attack)")
    attack_epochs: int = Field(10, ge=1)
    attack_batch_size: int = Field(64, ge=1)
    attack_lr: float = Field(1e-3, gt=0)
    averaged_attack_epochs: int = Field(0, ge=0, description="a second attack, trained this long on the mean of the "
                                        "uploads the server holds of each sample (one per round); 0 = off")
    examples: int = Field(8, ge=0, description="reconstructions kept for pictures (reconstructions.npz)")

    @model_validator(mode="after")
    def _every_round_needs_enabled(self) -> "LeakageConfig":
        if self.every_round and not self.enabled:
            raise ValueError("every_round needs enabled = true")
        return self


def _registries() -> dict[str, tuple[str, list[str]]]:
    """Config field → (what it names, the registered names); imported late so that loading a config stays cheap."""
    from locfedmix.data.partition import PARTITIONERS
    from locfedmix.data.user import dataset_names
    from locfedmix.models import model_names

    return {
        "algorithm": ("algorithm", list(ALGORITHMS)),
        "dataset": ("dataset", dataset_names()),
        "partition": ("partitioner", sorted(PARTITIONERS)),
        "model": ("model", model_names()),
    }


class Config(_Section):
    algorithm: str
    dataset: str
    model: str = "cnn"
    partition: str = "iid"
    n_clients: int = Field(ge=1)
    samples_per_client: int = Field(0, ge=0, description="cap per client; 0 = all of the client's share")
    rounds: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    seed: int = Field(0, ge=0)
    cut: int = Field(0, ge=0, description="blocks on the client; 0 = the model's default")
    checkpoint_every: int = Field(1, ge=0, description="rounds between checkpoints; 0 = never")
    client_optimizer: ClientOptimizerConfig = ClientOptimizerConfig()
    server_optimizer: OptimizerConfig = OptimizerConfig()
    data: DataConfig = DataConfig()
    algo: AlgoSwitches = AlgoSwitches()
    eval: EvalConfig = EvalConfig()
    latency: LatencyConfig = LatencyConfig()
    engine: EngineConfig = EngineConfig()
    log: LogConfig = LogConfig()
    participation: ParticipationConfig = ParticipationConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    leakage: LeakageConfig = LeakageConfig()

    @field_validator("algorithm", "dataset", "partition", "model")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        kind, allowed = _registries()[info.field_name]
        if name not in allowed:
            raise ValueError(f"unknown {kind} '{name}'; choose one of: {', '.join(allowed)}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        from locfedmix.models import n_blocks

        if self.cut and not 1 <= self.cut < n_blocks(self.model):
            raise ValueError(
                f"cut={self.cut} is outside model '{self.model}' ({n_blocks(self.model)} blocks); "
                f"choose a cut in 1..{n_blocks(self.model) - 1} (0 = default)"
            )
        if self.data.normalize and self.algo.rec_loss is ReconstructionLoss.BCE:
            raise ValueError("algo.rec_loss='bce' scores the decoder against images in [0, 1], and standardized "
                             "inputs are not; set data.normalize=false, or algo.rec_loss='mse'")
        if self.privacy.nopeek and self.batch_size < 2:
            raise ValueError("privacy.nopeek needs batch_size >= 2 (the distance correlation of one sample is 0)")
        if self.engine.distributed and (self.leakage.enabled or self.privacy.clip is not None or self.privacy.nopeek):
            raise ValueError("[privacy] defences and [leakage] run in one process so far; set engine.distributed=false")
        if self.algo.partners is not None and self.algo.partners > self.n_clients - 1:
            raise ValueError(f"algo.partners={self.algo.partners} needs at least {self.algo.partners + 1} clients")
        try:
            self.resolved_algorithm()
        except UserError as err:
            raise ValueError(str(err)) from None
        return self

    def resolved_algorithm(self):
        """The catalog's declaration of `algorithm` with the `algo.*` switches applied."""
        return resolve_algorithm(self.algorithm, self.algo.model_dump(exclude_none=True))


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    where = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden" and where in RENAMED_KEYS:
        return f"config key '{where}' is now '{RENAMED_KEYS[where]}' (Flower Datasets' name)"
    if error["type"] == "extra_forbidden":
        section: Any = model
        for part in error["loc"][:-1]:
            section = section.model_fields[part].annotation
        return f"unknown config key '{where}'; allowed: {', '.join(section.model_fields)}"
    if error["type"] == "missing":
        return f"missing config key '{where}'"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error":
        return f"{where}: {message}" if where else message
    return f"{where}={error['input']!r}: {message}"


def validate(tree: dict[str, Any]) -> Config:
    """Build the Config, reporting every problem at once on one line."""
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise UserError("; ".join(_describe(e, Config) for e in err.errors())) from None
