"""Fuzz: seeded mutations (truncations, byte overwrites, insertions, header words set to anything) of small real IDX
files (plain, gzip, and with the gzip container itself damaged) and CIFAR-10 batches (protocols 2 and 5, and the
Python 2 form of the official files). Every case either reads a well-formed array or fails with a one-line DataError
naming the file, within a small memory bound; never another exception, a crash or a hang. The case counts are fixed
(derandomized hypothesis, no example database), so SECURITY.md can state them. A third test builds batches from
well-formed pickles of wrong content (dtypes, shapes, labels), every protocol, and checks the reader against an oracle:
it reads exactly the valid ones."""

import gzip
import pickle
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locfedmix.data.cifar import read_batch
from locfedmix.data.idx import read_idx
from locfedmix.errors import DataError
from test_data import idx_bytes
from test_untrusted_data import MEMORY_BOUND, python2_batch

IDX_CASES = 600
CIFAR_CASES = 600
CIFAR_OBJECT_CASES = 200
FUZZ = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))

IDX_IMAGES = idx_bytes(np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5))
CIFAR_BATCHES = {
    "protocol 2": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 9]}, protocol=2),
    "protocol 5": pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": np.array([3, 9])}, protocol=5),
    "python 2": python2_batch(np.zeros((2, 3072), np.uint8), [3, 9]),
}


def mutations(words: int):
    """Lists of edits; positions are taken modulo the length of the bytes they edit. `words` is how many leading
    4-byte words (the IDX header) the 'word' edit may overwrite with any 32-bit value."""
    position = st.integers(0, 10**6)
    edit = st.one_of(
        st.tuples(st.just("truncate"), position),
        st.tuples(st.just("set"), position, st.integers(0, 255)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("word"), st.integers(0, words - 1), st.integers(0, 2**32 - 1)),
    )
    return st.lists(edit, min_size=1, max_size=4)


def mutate(raw: bytes, edits, positions: list[int] | None = None) -> bytes:
    """Apply the edits; with `positions`, an edit lands on one of those (a pickle's opcodes rather than its pixels)."""
    data = bytearray(raw)
    for kind, where, *value in edits:
        at = positions[where % len(positions)] if positions else where % (len(data) + 1)
        at = 4 * where if kind == "word" else min(at, len(data))
        if kind == "truncate":
            del data[at:]
        elif kind == "set" and at < len(data):
            data[at] = value[0]
        elif kind == "insert":
            data[at:at] = value[0]
        elif kind == "word":
            data[at:at + 4] = value[0].to_bytes(4, "big")
    return bytes(data)


def outcome(read, path):
    """The array(s) read, or None after a DataError that names the file on one line; asserts the memory bound."""
    tracemalloc.start()
    try:
        return read(path)
    except DataError as err:
        assert str(path) in str(err) and "\n" not in str(err), str(err)
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_BOUND, peak


def test_fuzzed_idx_files_read_or_fail_cleanly(tmp_path):
    cases = []

    @settings(FUZZ, max_examples=IDX_CASES)
    @given(st.sampled_from(["plain", "gzip", "gzip container"]), mutations(words=4))
    def case(form, edits):
        cases.append(form)
        path = tmp_path / ("images-idx3-ubyte" + ("" if form == "plain" else ".gz"))
        if form == "gzip container":
            path.write_bytes(mutate(gzip.compress(IDX_IMAGES, mtime=0), edits))
        else:
            raw = mutate(IDX_IMAGES, edits)
            path.write_bytes(gzip.compress(raw, mtime=0) if form == "gzip" else raw)
        images = outcome(lambda p: read_idx(p, ndim=3), path)
        if images is not None:
            assert images.dtype == np.uint8 and images.ndim == 3

    case()
    assert len(cases) == IDX_CASES


def opcode_positions(raw: bytes) -> list[int]:
    """Every position outside the batch's pixels (its run of zero bytes): where the pickle's structure lies."""
    start = raw.find(bytes(3072))
    end = start + len(raw[start:]) - len(raw[start:].lstrip(b"\0"))
    return [*range(start + 1), *range(end, len(raw) + 1)]


def test_fuzzed_cifar_batches_read_or_fail_cleanly(tmp_path):
    cases = []

    @settings(FUZZ, max_examples=CIFAR_CASES)
    @given(st.sampled_from(sorted(CIFAR_BATCHES)), st.booleans(), mutations(words=1))
    def case(form, structural, edits):
        cases.append(form)
        raw = CIFAR_BATCHES[form]
        path = tmp_path / "data_batch_1"
        # Aimed at the opcodes half of the time: pixels are read as they are, so edits there prove little.
        path.write_bytes(mutate(raw, edits, opcode_positions(raw) if structural else None))
        batch = outcome(read_batch, path)
        if batch is not None:
            images, labels = batch
            assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32) and len(images) >= 1
            assert labels.dtype == np.int64 and labels.shape == (len(images),) and set(labels) <= set(range(10))

    case()
    assert len(cases) == CIFAR_CASES


DEFECTS = [None, None, None, "dtype", "columns", "no images", "label value", "label count"]


@st.composite
def batches(draw):
    """(data, labels, defect): a well-formed batch with at most one defect; the reader must accept it iff none."""
    defect = draw(st.sampled_from(DEFECTS))
    rows = 0 if defect == "no images" else draw(st.integers(1, 3))
    columns = draw(st.sampled_from([3071, 16, 3073])) if defect == "columns" else 3072
    dtype = draw(st.sampled_from(["i1", "i8", "f4", "O"])) if defect == "dtype" else "u1"
    data = np.full((rows, columns), draw(st.integers(0, 127)), dtype)
    labels = draw(st.lists(st.integers(0, 9), min_size=rows, max_size=rows))
    if defect == "label value":
        labels[draw(st.integers(0, rows - 1))] = draw(st.sampled_from([-1, 10, 10**30, True, None, 3.0]))
    if defect == "label count":
        labels = labels[:-1] if draw(st.booleans()) else labels + [0]
    if defect != "label value" and draw(st.booleans()):
        labels = np.array(labels, dtype=draw(st.sampled_from(["u1", "i4", "i8"])))
    return data, labels, defect


def test_fuzzed_cifar_batch_contents_are_read_exactly_when_valid(tmp_path):
    cases = []

    @settings(FUZZ, max_examples=CIFAR_OBJECT_CASES)
    @given(batches(), st.sampled_from([0, 1, 2, 3, 4, 5, "python 2"]), st.booleans())
    def case(batch, protocol, bytes_keys):
        data, labels, defect = batch
        cases.append(defect)
        path = tmp_path / "data_batch_1"
        if protocol == "python 2":
            path.write_bytes(python2_batch(data, labels))
        else:
            keys = (b"data", b"labels") if bytes_keys else ("data", "labels")
            path.write_bytes(pickle.dumps(dict(zip(keys, (data, labels))), protocol))
        result = outcome(read_batch, path)
        assert (result is not None) == (defect is None), defect
        if result is not None:
            np.testing.assert_array_equal(result[0].reshape(len(data), -1), data)
            assert result[1].tolist() == list(labels)

    case()
    assert len(cases) == CIFAR_OBJECT_CASES and cases.count(None) > CIFAR_OBJECT_CASES // 4
