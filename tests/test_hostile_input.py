"""Property: any invalid config — wrong types, non-positive sizes, unknown names, absurd cuts, fractions outside
[0, 1], unknown keys — ends as one line on stderr with exit code 2, never a traceback."""

import tempfile
from pathlib import Path

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locfedmix.cli import main

VALID = {"algorithm": "sfl", "dataset": "synthetic", "model": "cnn", "partition": "iid", "n_clients": 2,
         "samples_per_client": 20, "rounds": 1, "batch_size": 10, "seed": 0}
INT_KEYS = ["n_clients", "rounds", "batch_size", "seed", "samples_per_client", "cut", "checkpoint_every"]
NAME_KEYS = ["algorithm", "dataset", "partition", "model"]
names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
not_a_number = st.one_of(names.filter(lambda t: not t.strip().lstrip("+-").isdigit()),
                         st.lists(st.integers(), max_size=2), st.floats(allow_nan=True).filter(lambda f: f != int(f)
                                                                                                  if f == f and abs(f) < 1e300 else True))
outside_unit = st.one_of(st.floats(max_value=-1e-6, allow_nan=False), st.floats(min_value=1.000001, allow_nan=False,
                                                                                  allow_infinity=False))


def mutations():
    return st.one_of(
        st.tuples(st.sampled_from(INT_KEYS), not_a_number).map(lambda kv: {kv[0]: kv[1]}),
        st.tuples(st.sampled_from(["n_clients", "rounds", "batch_size"]), st.integers(max_value=0))
        .map(lambda kv: {kv[0]: kv[1]}),
        st.tuples(st.sampled_from(NAME_KEYS), names.filter(lambda t: t not in {
            "sl", "psl", "sfl", "sflv1", "sflv2", "locsplitfed", "locfedmix", "sglr", "mix2sfl", "synthetic", "digits",
            "mnist", "fashion-mnist", "cifar10", "iid", "dirichlet", "shards", "cnn", "resnet", "alexnet"}))
        .map(lambda kv: {kv[0]: kv[1]}),
        st.integers(min_value=4, max_value=10**9).map(lambda c: {"cut": c}),
        st.integers(min_value=2001, max_value=10**6).map(lambda n: {"n_clients": n}),  # more clients than samples
        outside_unit.map(lambda f: {"data": {"val_fraction": f}}),
        outside_unit.map(lambda f: {"algorithm": "sglr", "algo": {"gradmix_fraction": f}}),
        outside_unit.map(lambda f: {"latency": {"target_accuracy": f}}),
        st.floats(max_value=0, allow_nan=False).map(lambda f: {"client_optimizer": {"lr": f}}),
        st.floats(max_value=-1e-6).map(lambda f: {"privacy": {"clip": 1.0, "noise_multiplier": f}}),
        st.floats(min_value=1e-6).map(lambda f: {"privacy": {"noise_multiplier": f}}),  # noise without a clip
        st.floats(max_value=0).map(lambda f: {"privacy": {"clip": f}}),
        st.sampled_from([float("inf"), float("nan")]).map(lambda f: {"privacy": {"clip": 1.0, "nopeek": f}}),
        st.integers(min_value=2001, max_value=10**6).map(lambda n: {"leakage": {"enabled": True, "aux_samples": n}}),
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda k: k not in {*VALID, "cut", "checkpoint_every",
                                                                                   "client_optimizer", "data", "algo",
                                                                                   "eval", "latency", "engine", "sweep",
                                                                                   "server_optimizer", "privacy",
                                                                                   "leakage"})
        .map(lambda k: {k: 1}),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutations(), min_size=1, max_size=3))
def test_invalid_configs_end_in_one_line_and_exit_code_2(capsys, mutations):
    tree = dict(VALID)
    for mutation in mutations:
        tree.update(mutation)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bad.toml"
        path.write_text(tomli_w.dumps(tree))
        code = main(["run", "--config", str(path), "--out", str(Path(tmp) / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, (tree, err)
    assert err.count("\n") == 1 and err.startswith("locfedmix: error: ") and "Traceback" not in err
