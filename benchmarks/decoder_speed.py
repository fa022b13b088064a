"""LocFedMix-SL's decoder, computed several ways: forward + backward time per sample for N clients × k samples, each
client with its own decoder weights, and how far each way's outputs and gradients land from the engine's own.

    python benchmarks/decoder_speed.py                      # 100 clients × 16 and 1,000 × 1
    python benchmarks/decoder_speed.py --cells 10/16 --seconds 0.5 --repeats 3

Ways: *loop* (the loop pool today: one decoder call per client), *loop, last conv NCHW* (the last convolution reads
a contiguous NCHW copy instead of the channels-last maps UpsampledConv writes), *loop, last conv as tap sums* (the
stacked pool's TapSumConv2d outside vmap), *loop, planar products* (PlanarDecoder: every step a product whose long
side is its last), *loop, torch.compile* (inductor's CPU code generation, one compiled
function for every client's decoder; "unavailable" with the reason where it cannot compile, e.g. no C++ compiler),
and *batched* (all clients' decoders in one torch.func.vmap call over their stacked weights, as the stacked pool runs
them). Each way is timed `--repeats` times, alternately; the table holds each way's median time and its median ratio
to *loop* within a repeat. `--round` adds whole `locfedmix` rounds on the loop pool (throughput.py's setting), its
decoders run eagerly and through torch.compile, alternately. Writes benchmarks/results/DECODER.md.
"""

import argparse
import copy
import itertools
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from locfedmix.engines.backends.denormals import denormals_flushed
from locfedmix.engines.backends.host_memory import keep_freed_host_memory
from locfedmix.engines.backends.stacked_layers import TapSumConv2d, stacked_runner
from locfedmix.engines.flow.round import train_round
from locfedmix.models.auxiliary import build_decoder, tap_matrix
from throughput import BATCH, warm_federation

RESULTS = Path(__file__).parent / "results"
CUT, SHAPE = (64, 8, 8), (3, 32, 32)  # the CNN's smashed maps and CIFAR's images, as in throughput.py


class NCHWInput(torch.nn.Module):
    """A module run on a contiguous (NCHW) copy of its input."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous())


class PlanarDecoder(torch.nn.Module):
    """The default decoder (UpsampledConv, ReLU, 3×3 convolution) as matrix products whose long side is the last
    one: one BLAS call per step with a few rows and thousands of columns, where the engine's products have thousands
    of rows and 9-144 columns and its last convolution is oneDNN's, whose cost does not fall below 16 outputs. The
    last convolution's taps are summed by in-place adds on a padded canvas (its backward reads slices of one
    gradient). Same weights as the decoder it wraps."""

    def __init__(self, decoder: torch.nn.Module):
        super().__init__()
        self.up, self.last = decoder[0], decoder[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (b, c, h, w), (big_h, big_w), o = x.shape, self.up.size, self.up.conv.out_channels
        mix = self.up.conv.weight.permute(2, 3, 0, 1).reshape(9 * o, c)  # rows (dy, dx, o)
        z = (mix @ x.permute(1, 0, 2, 3).reshape(c, b * h * w)).view(3, 3, o, b, h, w)
        z = tap_matrix(h, big_h, x) @ z.permute(0, 4, 1, 2, 3, 5).reshape(3 * h, 3 * o * b * w)  # height
        z = z.view(big_h, 3, o, b, w).permute(3, 2, 0, 1, 4).reshape(b * o * big_h, 3 * w) @ tap_matrix(w, big_w, x).T
        maps = torch.relu(z.view(b, o, big_h, big_w) + self.up.conv.bias.view(o, 1, 1))
        out = self.last.out_channels
        flipped = self.last.weight.flip(2, 3).permute(0, 2, 3, 1).reshape(out * 9, o)  # rows (out, ky, kx)
        taps = torch.bmm(flipped.expand(b, -1, -1), maps.view(b, o, big_h * big_w)).view(b, out, 9, big_h, big_w)
        canvas = taps.new_zeros(b, out, big_h + 2, big_w + 2)
        for t, tap in enumerate(taps.unbind(2)):  # out[y, x] += tap_t[y - ky + 1, x - kx + 1]
            ky, kx = divmod(t, 3)
            canvas[:, :, ky:ky + big_h, kx:kx + big_w] += tap
        return canvas[:, :, 1:big_h + 1, 1:big_w + 1] + self.last.bias.view(out, 1, 1)


def with_last_conv(decoder: torch.nn.Module, how: str) -> torch.nn.Module:
    """A copy of `decoder` whose last convolution reads NCHW (`nchw`) or runs as TapSumConv2d (`taps`)."""
    copied, last = copy.deepcopy(decoder), decoder[-1]
    if how == "nchw":
        copied[-1] = NCHWInput(copy.deepcopy(last))
    else:
        copied[-1] = TapSumConv2d(last.in_channels, last.out_channels, last.kernel_size, last.stride, last.padding)
        copied[-1].load_state_dict(last.state_dict())
    return copied


def looped(decoders: list[torch.nn.Module], run: Callable | None = None) -> Callable:
    """Loss of every client's decoder on its own inputs, one call per client (`run(decoder, x)` when given)."""
    run = run or (lambda d, x: d(x))
    return lambda xs, targets: sum(F.mse_loss(run(d, x), t) for d, x, t in zip(decoders, xs, targets))


def batched(decoders: list[torch.nn.Module]) -> tuple[Callable, dict]:
    """Loss of every client's decoder in one vmap call over their stacked weights, in the stacked pool's form."""
    params, buffers = stack_module_state(decoders)
    runner = stacked_runner(decoders[0], torch.device("cpu"))
    one = lambda p, b, x, t: F.mse_loss(functional_call(runner, (p, b), (x,)), t)
    return (lambda xs, targets: vmap(one)(params, buffers, xs, targets).sum()), params


def compiled(decoders: list[torch.nn.Module]) -> Callable | str:
    """The loop through one torch.compile'd function, or why it cannot compile here."""
    run = torch.compile(lambda d, x: d(x), dynamic=False)
    try:
        run(decoders[0], torch.zeros(1, *CUT))
    except Exception as error:  # inductor raises many kinds (no compiler, failed build); all mean "not here"
        return f"unavailable: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return looped(decoders, run)


def ways(n: int, k: int) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """Every way's loss function with the parameters whose gradients it fills, and the clients' inputs."""
    torch.manual_seed(0)
    decoders = [build_decoder(CUT, SHAPE) for _ in range(n)]
    xs, targets = torch.randn(n, k, *CUT), torch.randn(n, k, *SHAPE)
    out = {"loop": (looped(decoders), decoders)}
    for how, name in (("nchw", "loop, last conv NCHW"), ("taps", "loop, last conv as tap sums")):
        variant = [with_last_conv(d, how) for d in decoders]
        out[name] = (looped(variant), variant)
    variant = [PlanarDecoder(d) for d in copy.deepcopy(decoders)]
    out["loop, planar products"] = (looped(variant), variant)
    variant = copy.deepcopy(decoders)
    out["loop, torch.compile"] = (compiled(variant), variant)
    loss, params = batched(decoders)
    out["batched (vmap)"] = (loss, params)
    skipped = {name: way[0] for name, way in out.items() if isinstance(way[0], str)}
    return {name: way for name, way in out.items() if name not in skipped}, skipped, xs, targets


def grads(params) -> torch.Tensor:
    """Every gradient of `params` (modules or a stacked dict) flattened in one order, then cleared."""
    tensors = list(params.values()) if isinstance(params, dict) else [p for m in params for p in m.parameters()]
    if isinstance(params, dict):  # stacked [n, ...] → per client, in the modules' order
        flat = torch.cat([torch.cat([t.grad[i].flatten() for t in tensors]) for i in range(tensors[0].shape[0])])
    else:
        flat = torch.cat([t.grad.flatten() for t in tensors])
    for t in tensors:
        t.grad = None
    return flat


def measure(n: int, k: int, seconds: float, repeats: int) -> list[str]:
    found, skipped, xs, targets = ways(n, k)
    loss = {name: fn(xs, targets) for name, (fn, _) in found.items()}
    for name, (_, params) in found.items():
        loss[name].backward()
    reference = grads(found["loop"][1])
    gaps = {name: (grads(params) - reference).abs().max().item() if name != "loop" else 0.0
            for name, (_, params) in found.items()}
    times = {name: [] for name in found}
    for _ in range(repeats):
        for name, (fn, params) in found.items():
            times[name].append(timed(lambda: fn(xs, targets).backward(), seconds) / (n * k))
            grads(params)
    rows = [f"| {n} × {k} | {name} | {statistics.median(t) * 1e6:.0f} | "
            f"{statistics.median(a / b for a, b in zip(times['loop'], t)):.2f} | {gaps[name]:.1e} |"
            for name, t in times.items()]
    return rows + [f"| {n} × {k} | {name} | {why} | | |" for name, why in skipped.items()]


def timed(work: Callable[[], None], seconds: float) -> float:
    """Seconds per call of `work`, called until `seconds` have passed (at least twice, the first a warm-up)."""
    work()
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        work()
        calls += 1
    return (time.perf_counter() - start) / calls


def round_rows(n: int, k: int, seconds: float, repeats: int) -> list[str]:
    """locfedmix's training samples/s on the loop pool with every client's decoder eager, then compiled (one
    compiled function shared by all clients), alternately; the decoders' weights and the steps are the run's own."""
    cpu = torch.device("cpu")
    fed, indices, execute = warm_federation("locfedmix", n, k, "loop", cpu)
    rounds, heads = itertools.count(1), [fed.clients.head(i) for i in range(n)]
    shared = torch.compile(lambda module, x: torch.nn.Sequential.forward(module, x), dynamic=False)

    def rate(compiled: bool) -> float:
        for head in heads:  # an instance attribute shadows the class's forward; deleting it restores eager
            if compiled:
                head.forward = lambda x, module=head: shared(module, x)
            elif "forward" in vars(head):
                del head.forward
        step = lambda: train_round(fed, indices, BATCH, next(rounds), execute)
        return n * k / timed(step, seconds)

    rate(True)  # compiles
    with denormals_flushed():
        pairs = [(rate(False), rate(True)) for _ in range(repeats)]
    return [f"| {n} × {k} | {statistics.median(e for e, _ in pairs):.0f} | "
            f"{statistics.median(c for _, c in pairs):.0f} | {statistics.median(c / e for e, c in pairs):.2f} |"]


def last_conv_rows(k: int, seconds: float, repeats: int) -> list[str]:
    """The decoder's last convolution alone (16 channels-last maps of the input's size, 3×3, padding 1), forward and
    backward, at several output counts: what oneDNN charges for the few outputs the decoder has."""
    maps = torch.randn(k, SHAPE[1], SHAPE[2], 16).permute(0, 3, 1, 2).requires_grad_()
    rows = []
    for outputs in (1, SHAPE[0], 8, 16):
        conv = torch.nn.Conv2d(16, outputs, 3, padding=1)
        times = [timed(lambda: conv(maps).sum().backward(), seconds) for _ in range(repeats)]
        rows.append(f"| {outputs} | {statistics.median(times) * 1e6:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["100/16", "1000/1"], help="CLIENTS/SAMPLES")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--round", nargs="*", default=[], help="CLIENTS/SAMPLES of whole locfedmix rounds")
    parser.add_argument("--out", type=Path, default=RESULTS / "DECODER.md")
    args = parser.parse_args()
    keep_freed_host_memory()  # as a `locfedmix run` and throughput.py do
    load = os.getloadavg()[0]
    lines = [f"# LocFedMix-SL's decoder, computed several ways (cpu, {torch.get_num_threads()} threads)", "",
             f"`python benchmarks/decoder_speed.py` regenerates this file; load average {load:.2f} at the start. "
             "µs per sample for the decoder's forward and backward (its loss included), each client's own "
             "weights; *speed-up*: the median over repeats of loop's time ÷ this way's; *max gradient gap*: the "
             "largest difference of any weight gradient from the loop's, float32.", "",
             "| clients × samples | way | µs / sample | speed-up | max gradient gap |", "|---|---|---:|---:|---:|"]
    for cell in args.cells:
        n, k = (int(v) for v in cell.split("/"))
        lines += measure(n, k, args.seconds, args.repeats)
    lines += ["", f"The last convolution alone (16 maps of {SHAPE[1]}×{SHAPE[2]} → outputs, 3×3), forward and "
              "backward of 16 samples, µs (median over repeats):", "", "| outputs | µs |", "|---:|---:|",
              *last_conv_rows(16, args.seconds, args.repeats)]
    if args.round:
        lines += ["", "Whole `locfedmix` rounds on the loop pool, training samples/s (medians), decoders eager and "
                  "compiled, and the median of the per-repeat ratios:", "",
                  "| clients × samples | eager | compiled | compiled ÷ eager |", "|---|---:|---:|---:|"]
        for cell in args.round:
            lines += round_rows(*(int(v) for v in cell.split("/")), args.seconds, args.repeats)
    lines.append(f"\nLoad average at the end: {os.getloadavg()[0]:.2f}.")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
