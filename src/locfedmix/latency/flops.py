"""FLOPs per sample of each forward and backward pass, counted from the actual modules (torch.utils.flop_counter)."""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class SampleFlops:
    """Per-sample FLOPs (matmuls and convolutions, as torch's counter counts them)."""

    lower_fwd: float
    lower_bwd: float  # from the cut gradient back to the weights (no gradient w.r.t. the raw input)
    upper_fwd: float
    upper_bwd: float  # includes the gradient w.r.t. the smashed data, which the server must send down
    head_fwd: float = 0.0  # auxiliary classifier or decoder, when the algorithm has one
    head_bwd: float = 0.0


def _counted(fn) -> tuple[float, object]:
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return float(counter.get_total_flops()), result


def as_specified(module: nn.Module) -> nn.Module:
    """`module` with every layer that offers `specified()` (models.auxiliary.UpsampledConv) replaced by the layers it
    computes: the latency model charges a client the decoder as InfoPro specifies it (resize, then convolve), so
    simulated times do not hinge on how this simulator evaluates a layer, and runs before and after the factoring
    compare. A segment with keyed dropout (models.dropout.Keyed) is counted as the network it wraps."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if hasattr(child, "specified"):
                setattr(parent, name, child.specified())
    return module.specified() if hasattr(module, "specified") else module


def count_flops(lower: nn.Module, upper: nn.Module, head: nn.Module | None, input_shape: tuple[int, ...],
                batch: int = 2, as_computed: bool = False) -> SampleFlops:
    """Count on copies (BatchNorm statistics of the real modules stay untouched), with a batch of `batch`; layers
    that the simulator computes in a cheaper exact form are counted as specified (`as_specified`) unless
    `as_computed` (what this process really spends: benchmarks/throughput.py)."""
    copies = [copy.deepcopy(m) if m is not None else None for m in (lower, upper, head)]
    lower, upper, head = (m if m is None or as_computed else as_specified(m) for m in copies)
    x = torch.rand(batch, *input_shape)
    lower_fwd, smashed = _counted(lambda: lower(x))
    upload = smashed.detach().requires_grad_(True)
    upper_fwd, logits = _counted(lambda: upper(upload))
    target = torch.zeros(batch, dtype=torch.long)
    upper_bwd, _ = _counted(lambda: F.cross_entropy(logits, target).backward())
    lower_bwd, _ = _counted(lambda: smashed.backward(upload.grad))
    head_fwd = head_bwd = 0.0
    if head is not None:
        cut = smashed.detach().requires_grad_(True)
        head_fwd, out = _counted(lambda: head(cut))
        head_bwd, _ = _counted(lambda: out.square().mean().backward())
    per = 1.0 / batch
    return SampleFlops(lower_fwd * per, lower_bwd * per, upper_fwd * per, upper_bwd * per, head_fwd * per,
                       head_bwd * per)
