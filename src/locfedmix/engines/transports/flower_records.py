"""Tensors and states in Flower records: arrays travel as `ArrayRecord`s (NumPy's format, never a pickle), the
structure of a nested state as JSON in a `ConfigRecord`. Whatever arrives is checked against what was asked for
(keys, shapes, dtypes, a size bound) before it is used, so that a malformed or oversized reply is refused with a
reason instead of crashing the server."""

import hashlib
import json
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from locfedmix.models.dropout import PRIVATE

CHANNELS_LAST = "channels_last"


class Refused(Exception):
    """A message that does not hold what it must; the reason names what is wrong."""


def tensors(values: dict[str, torch.Tensor]) -> ArrayRecord:
    """Tensors by name, each sent in row-major order; a 4-D tensor kept channels-last says so (`layouts`), so that
    the receiver computes in the sender's layout and the numbers stay those of one process."""
    return ArrayRecord({k: Array.from_numpy_ndarray(v.detach().cpu().contiguous().numpy())
                        for k, v in values.items()})


def layouts(values: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors laid out channels-last (and not also plainly contiguous)."""
    return [k for k, v in values.items()
            if v.dim() == 4 and not v.is_contiguous() and v.is_contiguous(memory_format=torch.channels_last)]


def tensors_message(values: dict[str, torch.Tensor], **config: Any) -> RecordDict:
    """A message's content: the tensors, their layouts and small settings (ints, floats, strings)."""
    return RecordDict({"tensors": tensors(values),
                       "config": ConfigRecord({**config, CHANNELS_LAST: json.dumps(layouts(values))})})


def read_tensors(content: RecordDict, expected: dict[str, tuple[tuple[int, ...] | None, torch.dtype]],
                 limit_bytes: int) -> dict[str, torch.Tensor]:
    """The tensors `expected` (name → (shape or None for any, dtype)) out of a message, each checked; a missing,
    misshapen, mistyped or oversized one raises Refused naming it."""
    record = content.array_records.get("tensors")
    if record is None:
        raise Refused("no tensors in the message")
    total = sum(len(a.data) for a in record.values())
    if total > limit_bytes:
        raise Refused(f"{total:,} bytes of tensors, more than the {limit_bytes:,} allowed")
    marked = set(json.loads(str(setting(content, CHANNELS_LAST, "[]"))))
    out = {}
    for name, (shape, dtype) in expected.items():
        if name not in record:
            raise Refused(f"tensor {name!r} is missing")
        array = record[name]
        if array.dtype != str(torch.empty(0, dtype=dtype).numpy().dtype):
            raise Refused(f"tensor {name!r} is {array.dtype}, expected {dtype}")
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise Refused(f"tensor {name!r} has shape {tuple(array.shape)}, expected {tuple(shape)}")
        value = torch.from_numpy(np.array(array.numpy(), copy=True))
        out[name] = value.contiguous(memory_format=torch.channels_last) if name in marked else value
    return out


def setting(content: RecordDict, key: str, default: Any = None) -> Any:
    """A small setting from the message's config record (`default` when absent)."""
    record = content.config_records.get("config")
    return default if record is None or key not in record else record[key]


def state_record(state: dict[str, Any]) -> RecordDict:
    """A nested state (a pool's state_dict: dicts and lists of tensors and plain values) as records: its tensor
    leaves in an ArrayRecord by path, the rest as JSON with each tensor's path in its place."""
    leaves: dict[str, torch.Tensor] = {}

    def skeleton(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            leaves[path] = value
            return {"tensor": path, "channels_last": bool(layouts({path: value}))}
        if isinstance(value, dict):
            return {"dict": [[skeleton(k, f"{path}/k{n}"), skeleton(v, f"{path}/{n}")]
                             for n, (k, v) in enumerate(value.items())]}
        if isinstance(value, (list, tuple)):
            return {"list": [skeleton(v, f"{path}/{n}") for n, v in enumerate(value)]}
        return {"value": value}

    shape = json.dumps(skeleton(state, ""))
    return RecordDict({"tensors": tensors(leaves), "config": ConfigRecord({"skeleton": shape})})


def read_state(records: RecordDict) -> dict[str, Any]:
    """The nested state `state_record` wrote (only ever read back from the node's own context)."""
    arrays = records.array_records["tensors"]

    def build(node: dict) -> Any:
        if "tensor" in node:
            value = torch.from_numpy(np.array(arrays[node["tensor"]].numpy(), copy=True))
            # fused optimizers walk a state tensor's memory in its parameter's order: the layout must come back too
            return value.contiguous(memory_format=torch.channels_last) if node["channels_last"] else value
        if "dict" in node:
            return {build(k): build(v) for k, v in node["dict"]}
        if "list" in node:
            return [build(v) for v in node["list"]]
        return node["value"]

    return build(json.loads(str(records.config_records["config"]["skeleton"])))


def wire_bytes(message: Message) -> int:
    """What a message takes on the wire: the serialized size of every object Flower sends for it (its metadata,
    records and array chunks), before the transport's own framing."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def fingerprint(state: dict[str, torch.Tensor], prefix: str = "") -> str:
    """SHA-256 of a state's names (less `prefix`) and tensors in order: equal states, equal fingerprints, so the
    server compares clients' models without receiving them. A keyed dropout's key and counter, each client's own,
    are left out (models/dropout.py)."""
    digest = hashlib.sha256()
    for key, value in state.items():
        if key.removeprefix(prefix) in PRIVATE:
            continue
        digest.update(key.removeprefix(prefix).encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
