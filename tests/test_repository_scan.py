"""The model repository as read from disk (runtime/repository.py): the folder layout, config.yaml,
version policies, a load request's override and the options each version opens. Nothing is
loaded here; the files are tiny stand-ins except where a model file is read (the example)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tools import without_root_privileges

from maskrt.errors import MaskrtError
from maskrt.runtime.backends import check_model
from maskrt.runtime.options import RuntimeOptions
from maskrt.runtime.repository import (
    ModelConfig,
    VersionPolicy,
    options_for,
    parse_override,
    read_model,
    scan,
)

ROOT = Path(__file__).resolve().parents[1]


def put(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- layout -----------------------------------------------------------------------------------


def test_layout_versions_and_ignored_entries(tmp_path):
    put(tmp_path / "a" / "1" / "model.pt")
    put(tmp_path / "a" / "3" / "model.onnx")
    put(tmp_path / "a" / "3" / "notes.txt")  # not a model file: ignored
    put(tmp_path / "a" / "10" / "m.PLAN")  # suffixes in any case
    put(tmp_path / "a" / "0" / "model.pt")  # not a positive integer
    put(tmp_path / "a" / "01" / "model.pt")  # nor is a leading zero
    put(tmp_path / "a" / "v2" / "model.pt")
    put(tmp_path / "a" / ".staging" / "4" / "model.pt")
    put(tmp_path / "b" / "2" / "w.engine")
    put(tmp_path / ".hidden" / "1" / "model.pt")  # hidden: not a model
    put(tmp_path / "-bad" / "1" / "model.pt")  # not a name
    put(tmp_path / "README.md")  # a file beside the models
    entries = scan(tmp_path)
    assert sorted(entries) == ["a", "b"]
    a = entries["a"]
    assert a.error is None and a.path == tmp_path / "a"
    assert {n: p.name for n, p in a.versions.items()} == {
        1: "model.pt",
        3: "model.onnx",
        10: "m.PLAN",
    }
    assert a.served_versions() == [10]  # latest 1 by default
    assert entries["b"].versions == {2: tmp_path / "b" / "2" / "w.engine"}


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([], "no version folder"),
        (
            ["1/a.pt", "1/b.pth"],
            "needs exactly one model file (.pt, .pth, .onnx, .plan, .engine); found a.pt, b.pth",
        ),
        (
            ["1/readme.txt"],
            "needs exactly one model file (.pt, .pth, .onnx, .plan, .engine); found none",
        ),
        (["x/model.pt"], "no version folder (put the model file in"),
    ],
)
def test_a_broken_model_folder_is_an_entry_with_its_error(tmp_path, files, message):
    (tmp_path / "m").mkdir()
    for f in files:
        put(tmp_path / "m" / f)
    put(tmp_path / "ok" / "1" / "model.pt")
    entries = scan(tmp_path)
    assert entries["ok"].error is None
    error = entries["m"].error
    assert error is not None and message in error and str(tmp_path / "m") in error


def test_an_unreadable_model_folder_fails_that_model_only(tmp_path):
    """Permissions hold (as root too, through setpriv): a model folder the server may not read
    is that model's error; a repository it may not list is one error naming it."""
    put(tmp_path / "repo" / "a" / "1" / "model.pt")
    locked = put(tmp_path / "repo" / "locked" / "1" / "model.pt").parents[1]
    script = (
        "import json, sys; from pathlib import Path; from maskrt.errors import MaskrtError; "
        "from maskrt.runtime.repository import scan\n"
        "try: print(json.dumps({n: e.error for n, e in scan(Path(sys.argv[1])).items()}))\n"
        "except MaskrtError as exc: print(json.dumps(str(exc)))"
    )

    def scanned(root: Path) -> object:
        run = subprocess.run(
            [*without_root_privileges(), sys.executable, "-c", script, str(root)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    locked.chmod(0)
    try:
        errors = scanned(tmp_path / "repo")
        (tmp_path / "repo").chmod(0o300)  # no read: nothing in it can be listed
        unlisted = scanned(tmp_path / "repo")
    finally:
        (tmp_path / "repo").chmod(0o755)
        locked.chmod(0o755)
    assert isinstance(errors, dict) and errors["a"] is None
    assert errors["locked"] == f"{locked / 'config.yaml'}: cannot read it (Permission denied)"
    assert unlisted == f"{tmp_path / 'repo'}: cannot list the model repository (Permission denied)"


def test_scan_of_a_missing_folder_and_read_of_a_missing_model(tmp_path):
    with pytest.raises(MaskrtError, match="no such model repository"):
        scan(tmp_path / "nope")
    put(tmp_path / "a" / "1" / "model.pt")
    with pytest.raises(MaskrtError, match="no model 'b' in the repository"):
        read_model(tmp_path, "b")
    with pytest.raises(MaskrtError, match=r"no model '\.\./a'"):
        read_model(tmp_path, "../a")  # not a name: never a path out of the repository


# -- config.yaml --------------------------------------------------------------------------------


def test_config_yaml_every_key(tmp_path):
    put(tmp_path / "m" / "1" / "model.pt")
    put(tmp_path / "m" / "2" / "model.pt")
    put(
        tmp_path / "m" / "config.yaml",
        "config: resnet50_fpn\nlabels: [cat, dog]\ncanvas: 320\nbackend: torch\nmax_batch: 4\n"
        "max_delay_ms: 2.5\nmax_queue: 16\nengine_precision: fp32\ntrust_pickle: true\n"
        "version_policy: all\n",
    )
    entry = read_model(tmp_path, "m")
    assert entry.error is None
    assert entry.config.overrides() == {
        "config": "resnet50_fpn",
        "labels": "cat,dog",
        "canvas": 320,
        "backend": "torch",
        "max_batch": 4,
        "max_delay_ms": 2.5,
        "max_queue": 16,
        "engine_precision": "fp32",
        "trust_pickle": True,
    }
    assert entry.served_versions() == [1, 2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batchsize: 4\n", "max_batchsize: Extra inputs are not permitted"),
        ("max_batch: many\n", "max_batch: Input should be a valid integer"),
        (
            "backend: cuda\n",
            "backend: Input should be 'auto', 'torch', 'onnxruntime' or 'tensorrt'",
        ),
        ("version_policy: {latest: 0}\n", "version_policy.latest: Input should be greater than"),
        ("version_policy: {newest: 1}\n", "version_policy.newest: Extra inputs"),
        ("- a list\n", "must be a mapping of settings"),
        ("a: [unclosed\n", "cannot read it"),
        ("version_policy: {specific: [5]}\n", "selects none of the versions [1]"),
    ],
)
def test_a_bad_config_yaml_fails_its_model_only_naming_the_file(tmp_path, text, message):
    put(tmp_path / "m" / "1" / "model.pt")
    put(tmp_path / "m" / "config.yaml", text)
    put(tmp_path / "ok" / "1" / "model.pt")
    entries = scan(tmp_path)
    assert entries["ok"].error is None
    error = entries["m"].error
    assert error is not None and message in error, error
    assert str(tmp_path / "m") in error


def test_an_empty_config_yaml_is_the_defaults(tmp_path):
    put(tmp_path / "m" / "1" / "model.pt")
    put(tmp_path / "m" / "config.yaml", "# nothing set\n")
    entry = read_model(tmp_path, "m")
    assert entry.error is None and entry.config == ModelConfig()


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ("[square, circle, triangle]", "square,circle,triangle"),
        ("square,circle,triangle", "square,circle,triangle"),
        ("labels.txt", "FILE"),  # a file relative to the model's folder, not the working directory
    ],
)
def test_labels_as_list_comma_string_or_file(tmp_path, monkeypatch, labels, expected):
    put(tmp_path / "m" / "1" / "model.pt")
    put(tmp_path / "m" / "labels.txt", "square\ncircle\ntriangle\n")
    put(tmp_path / "m" / "config.yaml", f"labels: {labels}\n")
    monkeypatch.chdir(tmp_path)  # labels.txt is not in the working directory
    entry = read_model(tmp_path, "m")
    want = str(tmp_path / "m" / "labels.txt") if expected == "FILE" else expected
    assert entry.error is None and entry.config.labels == want
    options = options_for(RuntimeOptions(), entry, 1)
    from maskrt.model.config import parse_labels

    assert parse_labels(options.labels) == ("square", "circle", "triangle")


def test_a_labels_file_that_is_not_there_fails_the_model_when_its_options_are_made(tmp_path):
    put(tmp_path / "m" / "1" / "model.pt")
    put(tmp_path / "m" / "config.yaml", "labels: missing.txt\n")
    entry = read_model(tmp_path, "m")
    with pytest.raises(MaskrtError) as error:
        options_for(RuntimeOptions(), entry, 1)
    assert str(entry.path) in str(error.value) and "labels" in str(error.value)


# -- version policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "selected", "described"),
    [
        ({}, [5], "latest 1"),
        ({"latest": 2}, [3, 5], "latest 2"),
        ({"latest": 9}, [1, 3, 5], "latest 9"),
        ("all", [1, 3, 5], "all"),
        ({"all": True}, [1, 3, 5], "all"),
        ({"specific": [1, 5, 7]}, [1, 5], "specific 1, 5, 7"),
        # Triton's JSON forms (a load request's version_policy)
        ({"latest": {"num_versions": 2}}, [3, 5], "latest 2"),
        ({"latest": {}}, [5], "latest 1"),
        ({"all": {}}, [1, 3, 5], "all"),
        ({"specific": {"versions": [3]}}, [3], "specific 3"),
    ],
)
def test_version_policy(policy, selected, described):
    config = ModelConfig.model_validate({"version_policy": policy})
    assert config.version_policy.select([5, 1, 3]) == selected
    assert config.version_policy.describe() == described


def test_version_policy_refuses_nonsense():
    for bad in ({"latest": -1}, {"specific": "one"}, {"every": True}, "newest"):
        with pytest.raises(ValueError):
            ModelConfig.model_validate({"version_policy": bad})
    assert VersionPolicy().select([]) == []


# -- a load request's override --------------------------------------------------------------------


def test_parse_override_triton_keys():
    override = parse_override(
        json.dumps(
            {
                "name": "m",
                "platform": "pytorch_libtorch",
                "backend_name": "x",
                "max_batch_size": 4,
                "version_policy": {"specific": {"versions": [1, 2]}},
                "dynamic_batching": {"max_queue_delay_microseconds": 2500},
            }
        )
    )
    assert override.max_batch == 4 and override.max_delay_ms == 2.5
    assert override.version_policy.select([1, 2, 3]) == [1, 2]
    # only what it sets is set, so that it merges over config.yaml
    assert override.model_fields_set == {"max_batch", "max_delay_ms", "version_policy"}


def test_parse_override_config_yaml_keys():
    override = parse_override('{"labels": ["a", "b"], "max_queue": 8, "version_policy": "all"}')
    assert override.labels == "a,b" and override.max_queue == 8 and override.version_policy.all


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "the load request's config: not JSON"),
        ("[1]", "the load request's config: must be a JSON object"),
        ('{"max_batch_size": "x"}', "max_batch: Input should be a valid integer"),
        ('{"instance_group": []}', "instance_group: Extra inputs are not permitted"),
    ],
)
def test_parse_override_refuses_with_its_source(text, message):
    with pytest.raises(MaskrtError, match=r"^the load request's config: ") as error:
        parse_override(text)
    assert message in str(error.value)


# -- options of one version -----------------------------------------------------------------------


def test_options_for_puts_the_model_s_config_over_the_server_s(tmp_path):
    put(tmp_path / "m" / "2" / "model.onnx")
    put(tmp_path / "m" / "config.yaml", "max_batch: 2\nmax_delay_ms: 1\n")
    entry = read_model(tmp_path, "m")
    base = RuntimeOptions(
        model_repository=tmp_path,
        default_model="m",
        repository_poll_s=5,
        max_batch=16,
        max_queue=100,
        score_threshold=0.3,
    )
    options = options_for(base, entry, 2)
    assert options.model == str(tmp_path / "m" / "2" / "model.onnx")
    assert (options.model_name, options.model_version) == ("m", 2)
    assert (options.max_batch, options.max_delay_ms) == (2, 1)
    assert (options.max_queue, options.score_threshold) == (100, 0.3)  # the server's
    assert options.model_repository is None and options.repository_poll_s == 0
    # a load request's config instead of config.yaml
    options = options_for(base, entry, 2, ModelConfig(max_batch=3))
    assert (options.max_batch, options.max_delay_ms) == (3, base.max_delay_ms)


def test_options_for_names_the_model_folder_in_a_bad_value(tmp_path):
    put(tmp_path / "m" / "1" / "model.pt")
    put(tmp_path / "m" / "config.yaml", "canvas: 100\n")  # not a multiple of 32
    entry = read_model(tmp_path, "m")
    assert entry.error is None  # the config parses; its value fails where options are made
    with pytest.raises(MaskrtError, match=f"^{tmp_path / 'm'}: canvas: .*multiple of 32"):
        options_for(RuntimeOptions(), entry, 1)


def test_the_example_repository_serves_the_bundled_model(tmp_path):
    """examples/model-repository with the bundled checkpoint as version 1, as its README says:
    the entry parses and its labels pass the class-count check against the checkpoint."""
    from maskrt.model.checkpoint import default_checkpoint

    shutil.copytree(ROOT / "examples" / "model-repository", tmp_path / "repo")
    shutil.copy(default_checkpoint(), put(tmp_path / "repo" / "shapes" / "1" / "shapes.pt"))
    entries = scan(tmp_path / "repo")
    assert list(entries) == ["shapes"] and entries["shapes"].error is None
    options = options_for(RuntimeOptions(device="cpu"), entries["shapes"], 1)
    assert options.labels == "square,circle,triangle"
    check_model(options)  # raises when the labels are not the checkpoint's class count
    wrong = options.model_copy(update={"labels": "square,circle"})
    with pytest.raises(MaskrtError, match="class"):
        check_model(wrong)
