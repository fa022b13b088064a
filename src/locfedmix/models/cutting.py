"""Cutting a network into the client's lower segment and the server's upper segment: after the first k blocks of an
explicit list, or at a named submodule of any nn.Module, found in the module's forward as torch.fx traces it.

Why torch.fx, and why only part of the module: registration order in the module tree says nothing about what
forward does between the submodules (a flatten, a residual add, a slice of the class token), so cutting the tree
would silently drop or misplace that code. torch.export would capture it too, but as ATen operators with the
training/evaluation mode of BatchNorm and dropout frozen into the graph; fx keeps every submodule the model
registered as a real module (its .train()/.eval(), buffers and parameters as the user wrote them, which the engines
stack, average and count FLOPs on). The tracer steps only into the forwards of the cut's ancestors; every other
submodule, the cut itself included, is one opaque call, so code fx cannot follow (shape checks, data-dependent
branches) is fine anywhere off that path. The cut is valid when the cut module's output is the only value that
forward computes before it and uses after it; anything else crossing (the input, an earlier activation: a skip
connection) is refused, naming what crosses.
"""

import difflib
import os
import traceback
from collections.abc import Sequence

import torch
from torch import fx, nn

from locfedmix.errors import UserError


def split_blocks(blocks: Sequence[nn.Module], cut: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The first `cut` blocks (client) and the rest (server), each as an nn.Sequential."""
    if isinstance(cut, bool) or not isinstance(cut, int) or not 1 <= cut <= len(blocks) - 1:
        raise UserError(f"cut={cut!r} does not split a list of {len(blocks)} blocks; choose 1..{len(blocks) - 1}")
    return nn.Sequential(*blocks[:cut]), nn.Sequential(*blocks[cut:])


class _PathTracer(fx.Tracer):
    """Steps into the forward of the root and of each ancestor of `cut`; every other submodule is a leaf."""

    def __init__(self, cut: str):
        super().__init__()
        self.cut = cut

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.cut or not self.cut.startswith(qualified_name + ".")


def nearby_cuts(network: nn.Module, cut: str, n: int = 5) -> list[str]:
    """The submodule names most like `cut` (for the error that names a missing one)."""
    names = [name for name, _ in network.named_modules() if name]
    return difflib.get_close_matches(cut, names, n=n, cutoff=0.0)


class _Caller(nn.Module):
    """Calls the network with its input alone, so that every other argument of its forward keeps its default
    (labels=None, return_dict=None, ...) as in ordinary use; the network is its submodule `net`."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.net = network

    def forward(self, x: torch.Tensor):
        return self.net(x)


def _where(err: Exception) -> str:
    """The line of the model's own code (outside torch) where tracing stopped."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f"{os.sep}torch{os.sep}" not in f.filename]
    return f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} `{frames[-1].line}`" if frames else ""


def _trace(caller: _Caller, cut: str) -> fx.Graph:
    try:
        return _PathTracer(f"net.{cut}").trace(caller)
    except Exception as err:  # fx raises TraceError, TypeError, AttributeError... from inside the user's forward
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"cut={cut!r}: torch.fx cannot follow the forward of {type(caller.net).__name__} down to it "
                        f"({reason}{_where(err)}); pass the network as an explicit list of blocks instead") from None


def _cut_node(graph: fx.Graph, network: nn.Module, cut: str) -> fx.Node:
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == f"net.{cut}"]
    if len(calls) != 1:
        how = "is never called" if not calls else f"is called {len(calls)} times"
        raise UserError(f"cut={cut!r} {how} in the forward of {type(network).__name__}; cut at a submodule that "
                        f"runs once, e.g. one of: {', '.join(nearby_cuts(network, cut))}")
    return calls[0]


def _crossing(nodes: list[fx.Node], position: int) -> list[fx.Node]:
    """The values computed at or before `position` that a later node uses."""
    later = set(nodes[position + 1:])
    return [n for n in nodes[:position + 1] if n.op != "get_attr" and any(u in later for u in n.users)]


def _describe(node: fx.Node) -> str:
    if node.op == "placeholder":
        return f"the input {node.target!r}"
    if node.op == "call_module":
        return f"the output of {node.target.removeprefix('net.')!r}"
    return f"the value {node.name!r}"


def _logits(value):
    """The model's output as one tensor: the first entry of a tuple/list, 'logits' of a mapping (Hugging Face)."""
    if isinstance(value, (tuple, list)):
        return _logits(value[0])
    if isinstance(value, dict):
        return value["logits"] if "logits" in value else _logits(next(iter(value.values())))
    return value


def split_at(network: nn.Module, cut: str) -> tuple[nn.Module, nn.Module]:
    """Lower = forward up to and including submodule `cut`; upper = the rest, taking the cut's output."""
    if not cut or cut not in dict(network.named_modules()):
        raise UserError(f"cut={cut!r} is not a submodule of {type(network).__name__}; nearby: "
                        f"{', '.join(nearby_cuts(network, cut))}")
    caller = _Caller(network)
    graph = _trace(caller, cut)
    nodes = list(graph.nodes)
    node = _cut_node(graph, network, cut)
    position = nodes.index(node)
    others = [_describe(n) for n in _crossing(nodes, position) if n is not node]
    if others:
        verb = "crosses" if len(others) == 1 else "cross"
        raise UserError(f"cut={cut!r} does not separate {type(network).__name__}: besides its output, "
                        f"{', '.join(others)} {verb} it (a skip connection); cut before or after the skip")
    lower, upper = fx.Graph(), fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes[:position + 1]:
        env[n] = lower.node_copy(n, lambda a: env[a])
    lower.output(env[node])
    above = {node: upper.placeholder("smashed")}

    def upper_arg(a: fx.Node) -> fx.Node:
        if a not in above:  # an attribute read below the cut and used above it: the server reads it too
            above[a] = upper.node_copy(a)
        return above[a]

    for n in nodes[position + 1:]:
        if n.op == "output":
            upper.output(fx.map_arg(_logits(n.args[0]), upper_arg))
        else:
            above[n] = upper.node_copy(n, upper_arg)
    for part in (lower, upper):  # the network's own names again (layer1.0.conv, not net.layer1.0.conv)
        for n in part.nodes:
            if n.op in ("call_module", "get_attr"):
                n.target = n.target.removeprefix("net.")
    parts = fx.GraphModule(network, lower, "Lower"), fx.GraphModule(network, upper, "Upper")
    for part in parts:  # drops what the other segment computes (and the default-argument checks fx adds)
        part.graph.eliminate_dead_code()
        part.recompile()
    return parts


class AsIndices(nn.Module):
    """Casts the input to int64: lets code that probes a model with random floats (FLOP counting) reach an
    embedding layer, whose real inputs (token ids) are int64 already, unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.long()
