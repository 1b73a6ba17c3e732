"""Fault injection: malformed configuration (hand-edited params.yaml, bad overrides) fails up front.

Hypothesis picks any value of the composed config (every group's choices) and replaces it with one
of the wrong type or out of range, or adds an unknown key. The schema must name the exact key path;
the real CLI must exit 2 with that path, print no traceback, and leave every output byte-identical.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from recpipe.config import compose, to_yaml
from recpipe.errors import ConfigError
from recpipe.models import available
from recpipe.pipeline import STAGE_NAMES, STAGES
from recpipe.schema import MF, validate

from .helpers import REPO, assert_clean_failure, cli, fake_outputs, outputs, params_text, run_recpipe

VARIANTS = [
    [f"data={d}", f"split={s}", f"model={m}"]
    for d, s, m in [
        ("synthetic", "random", "mf"),
        ("files", "temporal", "ncf"),
        ("grouplens", "leave_last", "two_tower"),
        ("ml100k", "random", "hybrid"),
        ("synthetic", "temporal", "content"),
        ("synthetic", "random", "ease"),
        ("synthetic", "random", "item_knn"),
        ("synthetic", "random", "random"),
    ]
]
CONFIGS = [yaml.safe_load(to_yaml(compose(v, REPO / "conf"))) for v in VARIANTS]
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Path_ = tuple[Any, ...]


def leaves(node: Any, path: Path_ = ()) -> list[tuple[Path_, Any]]:
    """Every scalar of the config tree with its path (list positions as ints); nulls left out."""
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in leaves(v, (*path, k))]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in leaves(v, (*path, i))]
    return [] if node is None else [(path, node)]


def dotted(path: Path_) -> str:
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def wrong_value(value: Any) -> st.SearchStrategy[Any]:
    """Values that no key holding ``value`` accepts (another type; for numbers also nan, inf)."""
    words = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
    if isinstance(value, bool):
        return st.one_of(words, st.sampled_from([0, 1, "true", "no"]))
    if isinstance(value, int):  # (negatives and fractions are valid for some numbers, e.g. rating_scale;
        # null for some counts, e.g. export.scann.num_reordering_candidates)
        return st.one_of(words, st.sampled_from(["10", "1e3", [1], {"a": 1}]))
    if isinstance(value, float):
        return st.one_of(words, st.sampled_from([float("nan"), float("inf"), "0.5", [0.5], {"a": 0.5}]))
    return st.one_of(st.sampled_from([[["nested"]], {"a": "b"}, {"x": 1}]))


@st.composite
def broken_config(draw: st.DrawFn) -> tuple[dict, str]:
    """(config, dotted key that is wrong): one value replaced, or one unknown key added."""
    cfg = copy.deepcopy(draw(st.sampled_from(CONFIGS)))
    if draw(st.booleans()):
        path, value = draw(st.sampled_from(leaves(cfg)))
        node = cfg
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = draw(wrong_value(value))
        return cfg, dotted(path)
    sections = [(), *[(k,) for k, v in cfg.items() if isinstance(v, dict)]]
    where = draw(st.sampled_from(sections))
    key = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=10).map(lambda s: f"x{s}"))
    node = cfg
    for part in where:
        node = node[part]
    node[key] = draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
    return cfg, dotted((*where, key))


def test_every_config_choice_validates():
    for cfg in CONFIGS:
        validate(cfg, source="params.yaml")
    for name in available():
        validate(compose([f"model={name}"], REPO / "conf"))
    validate(compose(["hparams_search=mf"], REPO / "conf", config_name="run"))


@FAST
@given(broken_config())
def test_schema_names_the_broken_key(case):
    cfg, key = case
    with pytest.raises(ConfigError) as info:
        validate(cfg, source="params.yaml")
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith(f"{key}: ") and "params.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.members.ials.factors=0", "model.members.ials.factors"),
        ("+model.members.ease.xbogus=1", "model.members.ease.xbogus"),
        ("model.members.ials.name=nope", "model.members.ials.name"),
    ],
)
def test_blend_member_errors_name_the_member(override, key):
    with pytest.raises(ConfigError) as info:
        validate(compose(["model=blend", override], REPO / "conf"))
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith(f"{key}: ")


def test_gibbs_posterior_rank_must_hold_the_embedding():
    with pytest.raises(ConfigError) as info:
        validate(compose(["model=mf", "model.embedding_dim=200"], REPO / "conf"))
    assert "model.posterior_rank (128) must be >= model.embedding_dim (200)" in str(info.value)
    validate(compose(["model=mf", "model.embedding_dim=200", "model.solver=gradient"], REPO / "conf"))


def test_mf_gibbs_defaults_are_the_yaml_ones():
    mf = yaml.safe_load((REPO / "conf" / "model" / "mf.yaml").read_text())
    gibbs = ["burn_in", "posterior_rank", "rated_prior_columns", "validate_every", "seed", "implicit_iterations"]
    gibbs += ["implicit_alpha0", "implicit_lam", "implicit_nu", "implicit_dim"]
    assert {k: MF.model_fields[k].default for k in gibbs} == {k: mf[k] for k in gibbs}
    assert MF.model_fields["solver"].default == "gradient"  # configs and models from before the gibbs solver


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=broken_config())
def test_cli_stage_refuses_a_hand_edited_params_yaml(tmp_path_factory, case):
    """The real CLI, every stage that reads the broken section: exit 2, the key, nothing touched."""
    cfg, key = case
    root = tmp_path_factory.mktemp("stage")
    (root / "params.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))  # what OmegaConf reads back
    before = fake_outputs(root)
    section = key.split(".")[0].split("[")[0]
    stages = [s.name for s in STAGES if section in s.sections] or list(STAGE_NAMES)
    for stage in stages:
        result = cli([stage], root)
        assert_clean_failure(result, key, "params.yaml")
        assert outputs(root) == before


@pytest.mark.integration
def test_hand_edited_epochs_fails_in_a_second_as_a_subprocess(tmp_path):
    text = params_text()
    assert "  epochs: 2\n" in text
    (tmp_path / "params.yaml").write_text(text.replace("  epochs: 2\n", "  epochs: ten\n"))
    before = fake_outputs(tmp_path)
    start = time.perf_counter()
    result = run_recpipe(["train"], tmp_path)
    assert time.perf_counter() - start < 20  # no TensorFlow import, no data read
    assert_clean_failure(result, "model.epochs: expected an integer, got 'ten'", "params.yaml")
    assert outputs(tmp_path) == before


BAD_OVERRIDES = [  # (overrides, the place the message must name)
    ("model=mf model.epochs=ten", "model.epochs"),
    ("model=mf model.epochs=0", "model.epochs"),
    ("model=mf +model.epoch=3", "model.epoch"),
    ("split.ratios=[0.5,0.5,0.5]", "split.ratios"),
    ("seed=-1", "seed"),
    ("export.max_k=2147483648", "export.max_k"),
    ("evaluate.ks=[]", "evaluate.ks"),
    ("preprocess.duplicates=keep", "preprocess.duplicates"),
    ("split.cold_items=1", "split.cold_items"),
    ("data=files data.columns.item=user_id", "data.columns"),
    ("data=grouplens data.sha256=0", "data.sha256"),
    ("data=grouplens data.sha256=" + "g" * 64, "data.sha256"),
    ("model=nope", "model/nope"),
    ("split=nope", "split/nope"),
]


@settings(max_examples=10, deadline=None)
@given(case=st.sampled_from(BAD_OVERRIDES))
def test_compose_refuses_and_keeps_params_yaml(tmp_path_factory, case):
    overrides, place = case
    out = tmp_path_factory.mktemp("compose") / "params.yaml"
    out.write_text("previous\n")
    result = cli(["compose", *overrides.split(), "--config-dir", str(REPO / "conf"), "--output", str(out)], out.parent)
    assert_clean_failure(result, place)
    assert out.read_text() == "previous\n"


@pytest.mark.integration
def test_recpipe_run_validates_every_job_before_starting(tmp_path):
    """A sweep with one bad job fails before Hydra starts any job: no job folder, exit 2."""
    (tmp_path / "conf").symlink_to(REPO / "conf", target_is_directory=True)
    result = run_recpipe(["run", "-m", "data=synthetic", "model=mf,ncf", "model.patience=0"], tmp_path)
    assert_clean_failure(result, "model.patience: expected a positive integer, got 0")
    assert not (tmp_path / "outputs").exists()
    bad_choice = run_recpipe(["run", "model=nope"], tmp_path)
    assert_clean_failure(bad_choice, "model/nope")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    garbage=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.sampled_from(
            [
                b"model: {epochs: [",
                b"a: 1\na: 2\n",
                b"- 1\n- 2\n",
                b"just text",
                b"\xff\xfe\x00",
                b"data: &a [*a]\n",
                b"model: !!python/object:os.system {}\n",
                b"seed: ${nothing}\n",
            ]
        ),
    )
)
def test_garbage_params_yaml(tmp_path_factory, garbage):
    """Whatever bytes params.yaml holds, every stage exits 2 naming it (or a key in it)."""
    root = tmp_path_factory.mktemp("garbage")
    (root / "params.yaml").write_bytes(garbage)
    before = fake_outputs(root)
    for stage in STAGE_NAMES:
        result = cli([stage], root)
        assert result.code == 2 and "Traceback" not in result.text, result.text
        assert "params.yaml" in result.err, result.err
        assert outputs(root) == before
