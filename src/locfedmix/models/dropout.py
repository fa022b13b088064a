"""Dropout whose masks are a pure function of a key and a counter: a network segment that drops values in training
draws every mask from its own `dropout_key` and `dropout_count` buffers through a counter-based integer hash written
in integer tensor ops, so the loop and the stacked engine (under vmap, with one key per client), a resumed run and a
recomputed forward all draw the same masks, and no device-specific generator is involved (only the CPU is tested).
torch's global generator is never read."""

import copy
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

from locfedmix.errors import UserError
from locfedmix.rng import derive_seed

KEY, COUNT = "dropout_key", "dropout_count"
PRIVATE = (KEY, COUNT)  # what stays with its client: FedAvg and the relay neither average nor hand them over
_WORD = 0xFFFFFFFF
_MULTI_HEAD = inspect.signature(F.multi_head_attention_forward)
_CHANNELS = {F.dropout: 0, F.dropout1d: 1, F.dropout2d: 2, F.dropout3d: 3}
# Draws a keyed mask cannot stand in for: a network calling one of these in training is refused when it is built.
_UNKEYED = {F.alpha_dropout, F.feature_alpha_dropout, torch.rand, torch.rand_like, torch.randn, torch.randn_like,
            torch.randint, torch.randint_like, torch.randperm, torch.bernoulli, torch.Tensor.bernoulli_,
            torch.normal, torch.Tensor.normal_, torch.Tensor.uniform_, torch.multinomial}


def _mul(x: torch.Tensor, m: int) -> torch.Tensor:
    """x·m mod 2³² for x < 2³² held in int64, in two 16-bit halves of m so that no product passes 2⁶³."""
    return (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & _WORD


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply, "lowbias32"): every output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = _mul(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul(x, 0x846CA68B)
    return x ^ (x >> 16)


def keep_mask(key: torch.Tensor, count: torch.Tensor, call: int, shape: tuple[int, ...], p: float,
              dtype: torch.dtype) -> torch.Tensor:
    """1 where a value is kept, 0 where dropped (each with probability p, to 2⁻²⁴), for the `call`-th dropout of a
    forward: hash(key, count, call, position). `key` is two 32-bit words; under vmap each client brings its own."""
    seed = _mix(key[0] ^ _mix(key[1] ^ _mix((count & _WORD) ^ _mix(torch.tensor(call, device=key.device)))))
    positions = torch.arange(torch.Size(shape).numel(), device=key.device).view(shape)
    bits = _mix(_mix(positions ^ seed) ^ key[1])
    return ((bits >> 8) >= round(p * 2**24)).to(dtype)


class KeyedDraws(TorchFunctionMode):
    """While a keyed segment runs forward in training: each dropout (F.dropout and its channel-wise forms, the
    attention dropout of F.scaled_dot_product_attention and of nn.MultiheadAttention) takes its mask from
    `keep_mask`; every other call runs as it is."""

    def __init__(self, key: torch.Tensor, count: torch.Tensor):
        super().__init__()
        self.key, self.count, self.calls = key, count, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CHANNELS:
            return self.dropout(_CHANNELS[func], *args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return self.attention(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            return self.multi_head(func, _MULTI_HEAD.bind(*args, **kwargs).arguments)
        return func(*args, **kwargs)

    def dropout(self, channel_dims: int, input: torch.Tensor, p: float = 0.5, training: bool = True,
                inplace: bool = False) -> torch.Tensor:
        if not training or p == 0:
            return input
        shape = input.shape[:input.dim() - channel_dims] + (1,) * channel_dims if channel_dims else input.shape
        self.calls += 1
        scale = keep_mask(self.key, self.count, self.calls, tuple(shape), p, input.dtype) / (1 - p) if p < 1 else 0
        return input.mul_(scale) if inplace else input * scale

    def multi_head(self, func, args: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """nn.MultiheadAttention's forward with its attention weights dropped out by a keyed mask: torch runs it
        from one Python function, inside which no mode sees the dropout, so the weights are asked of it without
        dropout and the rest (weights × projected values, heads joined, output projection) is computed here."""
        if not args.get("training", True) or not args["dropout_p"]:
            return func(**args)
        if args.get("bias_k") is not None or args.get("add_zero_attn") or args.get("static_v") is not None:
            raise UserError("nn.MultiheadAttention with add_bias_kv, add_zero_attn or a static value and dropout > 0 "
                            "cannot draw its dropout from the run's seed; set its dropout to 0")
        weights = func(**{**args, "dropout_p": 0.0, "need_weights": True, "average_attn_weights": False})[1]
        value, heads, width = args["value"], args["num_heads"], args["embed_dim_to_check"]
        batched = value.dim() == 3
        value, weights = (value, weights) if batched else (value.unsqueeze(1), weights.unsqueeze(0))
        separate, bias = args.get("use_separate_proj_weight"), args["in_proj_bias"]
        projection = args["v_proj_weight"] if separate else args["in_proj_weight"][2 * width:]
        v = F.linear(value, projection, None if bias is None else bias[2 * width:])  # [S, N, E]
        n, length = v.size(1), weights.size(-2)
        v = v.reshape(v.size(0), n * heads, width // heads).transpose(0, 1)  # [N·H, S, E/H]
        dropped = self.dropout(0, weights.reshape(n * heads, length, -1), args["dropout_p"])
        out = (dropped @ v).transpose(0, 1).reshape(length, n, width)
        out = F.linear(out, args["out_proj_weight"], args["out_proj_bias"])
        if not args.get("need_weights", True):
            return (out if batched else out.squeeze(1)), None
        shown = dropped.view(n, heads, length, -1)
        shown = shown.mean(dim=1) if args.get("average_attn_weights", True) else shown
        return (out, shown) if batched else (out.squeeze(1), shown.squeeze(0))

    def attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False) -> torch.Tensor:
        """softmax(q·kᵀ·scale + mask), dropped out, times v: what the fused kernel computes, with a keyed mask."""
        if dropout_p == 0:
            return F.scaled_dot_product_attention(query, key, value, attn_mask, 0.0, is_causal, scale=scale,
                                                  enable_gqa=enable_gqa)
        if enable_gqa:
            repeat = query.size(-3) // key.size(-3)
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        scores = query @ key.transpose(-2, -1) * (query.size(-1) ** -0.5 if scale is None else scale)
        if is_causal:
            attn_mask = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        elif attn_mask is not None:
            scores = scores + attn_mask
        return self.dropout(0, scores.softmax(-1), dropout_p) @ value


class _Census(TorchFunctionMode):
    """Records the random draws a forward makes: how many dropouts, and which draws no key can stand in for."""

    def __init__(self):
        super().__init__()
        self.dropouts, self.unkeyed = 0, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CHANNELS:  # (input, p, training, inplace), as F.dropout hands them over
            named = dict(zip(("input", "p", "training"), args)) | kwargs
            self.dropouts += bool(named.get("p", 0.5)) and named.get("training", True)
            return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            self.dropouts += bool(kwargs.get("dropout_p", args[4] if len(args) > 4 else 0))
        if func is F.multi_head_attention_forward:
            named = _MULTI_HEAD.bind(*args, **kwargs).arguments
            self.dropouts += bool(named["dropout_p"]) and named.get("training", True)
        if func in _UNKEYED:
            self.unkeyed.add(resolve_name(func) or str(func))
        return func(*args, **kwargs)


class Keyed(nn.Module):
    """A network segment whose dropout draws from its own key and counter: its forward in training runs under
    KeyedDraws and then advances the counter (in place, so that the stacked engine's per-client rows advance under
    vmap as a BatchNorm's statistics do). The segment is its submodule `net`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer(KEY, torch.zeros(2, dtype=torch.int64))
        self.register_buffer(COUNT, torch.zeros((), dtype=torch.int64))

    def specified(self) -> nn.Module:
        """The network as written, for the latency model: keyed attention dropout computes nn.MultiheadAttention's
        output a second time (KeyedDraws.multi_head), which the simulated clients should not be charged for."""
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.net(x)
        with KeyedDraws(getattr(self, KEY), getattr(self, COUNT)):
            out = self.net(x)
        with torch.no_grad():
            getattr(self, COUNT).add_(1)
        return out


def keyed(segment: nn.Module, example: torch.Tensor, name: str) -> nn.Module:
    """`segment` as a Keyed one when its forward in training draws any dropout (found by running a copy on two
    rows of `example`), unchanged otherwise. A random draw other than dropout is refused: it would come from
    torch's global generator, which no seed of the run controls."""
    recurrent = [n for n, m in segment.named_modules() if isinstance(m, nn.RNNBase) and m.dropout]
    if recurrent:
        raise UserError(f"the {name}'s recurrent layer '{recurrent[0]}' drops values between its layers inside "
                        "torch's kernel, from torch's global generator, which the run's seed does not control; set "
                        "its dropout to 0 (or put an nn.Dropout between single-layer recurrent modules)")
    census = _Census()
    trial = copy.deepcopy(segment).train()
    with torch.no_grad(), torch.random.fork_rng(devices=[]), census:  # the trial's draws move no generator
        trial(torch.cat([example, example])[:2] if len(example) < 2 else example)
    if census.unkeyed:
        raise UserError(f"the {name} draws {', '.join(sorted(census.unkeyed))} in its forward, from torch's global "
                        f"generator, which the run's seed does not control; only dropout is drawn from the seed")
    return Keyed(segment) if census.dropouts else segment


def key_for(seed: int, purpose: str, owner: int) -> torch.Tensor:
    """The two 32-bit words of the key of `owner` (a client, or a server copy) for `purpose` under `seed`."""
    word = derive_seed(seed, f"dropout-{purpose}", owner)
    return torch.tensor([word & _WORD, word >> 32], dtype=torch.int64)


def set_key(module: nn.Module, seed: int, purpose: str, owner: int) -> None:
    """Give a keyed module its owner's key (nothing to do for a module without dropout)."""
    if hasattr(module, KEY):
        with torch.no_grad():
            getattr(module, KEY).copy_(key_for(seed, purpose, owner))


def shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the entries that stay with their client."""
    return {k: v for k, v in state.items() if k not in PRIVATE}


def own_private(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the module's own key and counter in place of any it brings: what a client loads when another's
    model (the relay's hand-over, FedAvg's average) replaces its own."""
    mine = {k: v for k, v in module.state_dict().items() if k in PRIVATE}
    return {**shared(state), **mine}
