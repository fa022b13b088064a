"""Property: any invalid config — wrong types, non-positive sizes, unknown names, absurd cuts, fractions outside
[0, 1], participation settings out of bounds, unknown keys — ends as one line on stderr with exit code 2, never a
traceback. And configs and --set values are data, never code: payloads that would run under eval, unsafe YAML or a
shell stay text or are refused."""

import ast
import re
import tempfile
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locfedmix.cli import main
from locfedmix.config_files import parse_override
from locfedmix.experiment import load_experiment

VALID = {"algorithm": "sfl", "dataset": "synthetic", "model": "cnn", "partition": "iid", "n_clients": 2,
         "samples_per_client": 20, "rounds": 1, "batch_size": 10, "seed": 0}
INT_KEYS = ["n_clients", "rounds", "batch_size", "seed", "samples_per_client", "cut", "checkpoint_every"]
NAME_KEYS = ["algorithm", "dataset", "partition", "model"]
names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
not_a_number = st.one_of(names.filter(lambda t: not t.strip().lstrip("+-").isdigit()),
                         st.lists(st.integers(), max_size=2),
                         st.floats(allow_nan=True).filter(lambda f: f != int(f) if f == f and abs(f) < 1e300 else True))
outside_unit = st.one_of(st.floats(max_value=-1e-6, allow_nan=False), st.floats(min_value=1.000001, allow_nan=False,
                                                                                  allow_infinity=False))


def participation():
    """One [participation] field out of its bounds, of the wrong type, or unknown."""
    nan_or_inf = st.sampled_from([float("nan"), float("inf"), float("-inf")])
    bad = {
        "fraction": st.one_of(st.floats(max_value=0, allow_nan=False), outside_unit, nan_or_inf),
        "dropout": st.one_of(outside_unit, nan_or_inf),
        "stragglers": st.one_of(outside_unit, nan_or_inf),
        "straggler_slowdown": st.one_of(st.floats(max_value=0.999999, allow_nan=False), nan_or_inf),
        "deadline_s": st.one_of(st.floats(max_value=-1e-9, allow_nan=False), nan_or_inf),
    }
    out_of_bounds = st.sampled_from(sorted(bad)).flatmap(lambda k: bad[k].map(lambda v: {k: v}))
    wrong_type = st.tuples(st.sampled_from(sorted(bad)), st.one_of(names.filter(
        lambda t: not _is_float(t)), st.lists(st.integers(), max_size=2))).map(lambda kv: {kv[0]: kv[1]})
    unknown = st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda k: k not in bad).map(lambda k: {k: 1})
    return st.one_of(out_of_bounds, wrong_type, unknown).map(lambda p: {"participation": p})


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def mutations():
    return st.one_of(
        st.tuples(st.sampled_from(INT_KEYS), not_a_number).map(lambda kv: {kv[0]: kv[1]}),
        st.tuples(st.sampled_from(["n_clients", "rounds", "batch_size"]), st.integers(max_value=0))
        .map(lambda kv: {kv[0]: kv[1]}),
        st.tuples(st.sampled_from(NAME_KEYS), names.filter(lambda t: t not in {
            "sl", "psl", "sfl", "sflv1", "sflv2", "locsplitfed", "locfedmix", "sglr", "mix2sfl", "synthetic", "digits",
            "mnist", "fashion-mnist", "cifar10", "iid", "dirichlet", "pathological", "shards", "cnn", "resnet",
            "alexnet"}))
        .map(lambda kv: {kv[0]: kv[1]}),
        st.integers(min_value=4, max_value=10**9).map(lambda c: {"cut": c}),
        st.integers(min_value=2001, max_value=10**6).map(lambda n: {"n_clients": n}),  # more clients than samples
        outside_unit.map(lambda f: {"data": {"val_fraction": f}}),
        outside_unit.map(lambda f: {"algorithm": "sglr", "algo": {"gradmix_fraction": f}}),
        outside_unit.map(lambda f: {"latency": {"target_accuracy": f}}),
        st.floats(max_value=0, allow_nan=False).map(lambda f: {"client_optimizer": {"lr": f}}),
        participation(),
        st.floats(max_value=-1e-6).map(lambda f: {"privacy": {"clip": 1.0, "noise_multiplier": f}}),
        st.floats(min_value=1e-6).map(lambda f: {"privacy": {"noise_multiplier": f}}),  # noise without a clip
        st.floats(max_value=0).map(lambda f: {"privacy": {"clip": f}}),
        st.sampled_from([float("inf"), float("nan")]).map(lambda f: {"privacy": {"clip": 1.0, "nopeek": f}}),
        st.integers(min_value=2001, max_value=10**6).map(lambda n: {"leakage": {"enabled": True, "aux_samples": n}}),
        st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda k: k not in {*VALID, "cut", "checkpoint_every",
                                                                                   "client_optimizer", "data", "algo",
                                                                                   "eval", "latency", "engine", "sweep",
                                                                                   "server_optimizer", "log", "privacy",
                                                                                   "participation",
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


# --- configs and --set values are data, never code ------------------------------------------------------------

SMALL = dict(VALID, n_clients=2, samples_per_client=10, rounds=1, batch_size=5)


def code_payloads(marker: Path) -> list[str]:
    """Values that create `marker` if anything evaluates them: Python eval, unsafe YAML, a shell, a template."""
    return [f"__import__('os').system('touch {marker}')", f'!!python/object/apply:os.system ["touch {marker}"]',
            f"$(touch {marker})", f"`touch {marker}`", "{{ 7*7 }}", f"exec(\"open('{marker}', 'w')\")"]


def test_set_values_that_look_like_code_stay_plain_strings(tmp_path):
    for payload in code_payloads(tmp_path / "MARKER"):
        assert parse_override(f"data.dir={payload}") == (["data", "dir"], payload)
    assert parse_override("seed=7") == (["seed"], 7) and parse_override("algo.mix=false") == (["algo", "mix"], False)
    assert not (tmp_path / "MARKER").exists()


def test_set_code_is_rejected_where_a_name_is_expected_and_kept_as_text_elsewhere(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, marker = tmp_path / "c.toml", tmp_path / "MARKER"
    config.write_text(tomli_w.dumps(SMALL))
    payloads = code_payloads(marker)
    for payload in payloads:
        assert main(["run", "--config", str(config), "--out", str(tmp_path / "o"), "--no-progress",
                     "--set", f"algorithm={payload}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unknown algorithm" in err, err
        # data.dir is free text (synthetic data never reads it): the value reaches the validated config verbatim.
        ((_, cell),) = load_experiment(config, [f"data.dir={payload}"])
        assert cell.data.dir == payload
    out = tmp_path / "ran"  # and one real run records it verbatim in the run directory
    assert main(["run", "--config", str(config), "--out", str(out), "--no-progress",
                 "--set", f"data.dir={payloads[0]}"]) == 0
    assert tomllib.loads((out / "config.toml").read_text())["data"]["dir"] == payloads[0]
    assert not marker.exists()


def test_set_cannot_smuggle_extra_toml_lines(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(tomli_w.dumps(SMALL))
    assert main(["run", "--config", str(config), "--set", "seed=1\n[data]\ndir = '/etc'"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one TOML literal" in err


@pytest.mark.parametrize("text, fragment", [
    ('algorithm = !!python/object/apply:os.system ["touch {marker}"]\n', "is not valid TOML"),
    ("algorithm = __import__('os').system('touch {marker}')\n", "is not valid TOML"),
    ("!!python/object/apply:os.system\nargs: ['touch {marker}']\n", "is not valid TOML"),
    (b"algorithm = '\xff'\n", "is not UTF-8 text"),
    ("algorithm = " + "[" * 5000 + "]" * 5000 + "\n", "nests arrays or tables too deeply"),
])
def test_config_files_that_are_not_toml_data_are_named_in_one_line(text, fragment, tmp_path, capsys):
    marker, path = tmp_path / "MARKER", tmp_path / "bad.toml"
    body = text if isinstance(text, bytes) else text.format(marker=marker).encode()
    path.write_bytes(tomli_w.dumps({k: v for k, v in SMALL.items() if k != "algorithm"}).encode() + body)
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"config file '{path}' {fragment}" in err, err
    assert not marker.exists()


@pytest.mark.parametrize("tree, fragment", [
    ({"algorithm": "!!python/object/apply:os.system ['touch {marker}']"}, "unknown algorithm '!!python/object"),
    ({"sweep": {"seed": list(range(200)), "rounds": list(range(1, 201))}}, "expands to 40000 runs; at most 10000"),
])
def test_config_values_are_checked_as_data(tree, fragment, tmp_path, capsys):
    marker, path = tmp_path / "MARKER", tmp_path / "bad.toml"
    text = tomli_w.dumps({**SMALL, **tree})
    path.write_text(text.replace("{marker}", str(marker)))
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err
    assert not marker.exists()


def test_a_directory_as_config_is_one_line(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err


# Calls that run or deserialize code; none may appear in the library (the CIFAR reader's restricted unpickler and
# torch.load(weights_only=True) are the only deserializers, and are checked for separately).
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "os.system", "os.popen", "pickle.load", "pickle.loads",
                   "marshal.loads", "yaml.load", "yaml.unsafe_load", "shelve.open", "subprocess.getoutput"}
FORBIDDEN_IMPORTS = {"yaml", "marshal", "shelve", "dill", "cloudpickle", "joblib"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"import {n}" for n in names if n.split(".")[0] in FORBIDDEN_IMPORTS]
        if not isinstance(node, ast.Call):
            continue
        name, keywords = _dotted(node.func), {k.arg: k.value for k in node.keywords}
        safe_load = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
        no_pickle = not isinstance(keywords.get("allow_pickle"), ast.Constant) or not keywords["allow_pickle"].value
        if (name in FORBIDDEN_CALLS or (name == "torch.load" and not safe_load)
                or (name in {"np.load", "numpy.load"} and not no_pickle)
                or (isinstance(keywords.get("shell"), ast.Constant) and keywords["shell"].value is True)):
            found.append(f"{name}() at line {node.lineno}")
    return found


def test_the_library_never_evaluates_or_unpickles_freely():
    source = Path(__file__).parents[1] / "src" / "locfedmix"
    unsafe = {str(p.relative_to(source)): calls for p in sorted(source.rglob("*.py"))
              if (calls := _unsafe_calls(ast.parse(p.read_text())))}
    assert unsafe == {}
    cifar = (source / "data" / "cifar.py").read_text()
    assert re.search(r"class \w+\(pickle\.Unpickler\):\n(.*\n)*?    def find_class", cifar)
