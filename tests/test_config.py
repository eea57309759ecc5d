"""Recipes: YAML -> Recipe -> JSON -> Recipe round trips, dotted overrides, and a property test that any
mapping built from the recipe's own field names gives a Recipe or a TextdiffError, never another exception."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textdiff.config import SECTIONS, Recipe, apply_overrides, load_recipe, parse_override, recipe_from_dict
from textdiff.errors import TextdiffError

RECIPES = sorted((Path(__file__).parents[1] / "recipes").rglob("*.yaml"))


def _json_round_trip(recipe: Recipe, tmp_path: Path) -> Recipe:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(recipe.to_dict()))
    return recipe_from_dict(json.loads(path.read_text()), str(path))


# --- every shipped recipe ------------------------------------------------------------------------------------


def test_recipes_exist():
    assert RECIPES, "no YAML recipes found under recipes/"


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(p.parents[1])) for p in RECIPES])
def test_shipped_recipe_loads_and_round_trips(path, tmp_path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert _json_round_trip(recipe, tmp_path) == recipe


# --- round trip ------------------------------------------------------------------------------------------------


def test_yaml_json_round_trip(write_recipe, tmp_path):
    path = write_recipe(model={"positions": "learned", "dropout": 0.1}, train={"betas": [0.8, 0.95], "ema": 0.99},
                        sample={"infill": "the [MASK:2] king [MASK]", "length": 16, "top_p": 0.9})
    recipe = load_recipe(path)
    again = _json_round_trip(recipe, tmp_path)
    assert again == recipe
    assert again.to_dict() == recipe.to_dict()
    assert again.train.betas == (0.8, 0.95) and isinstance(again.train.betas, tuple)
    assert again.model.positions == "learned" and again.sample.infill == "the [MASK:2] king [MASK]"


def test_run_config_extra_type_key_is_ignored(write_recipe):
    recipe = load_recipe(write_recipe())
    assert recipe_from_dict({"type": "textdiff", **recipe.to_dict()}) == recipe


def test_defaults_fill_missing_sections(corpus):
    recipe = recipe_from_dict({"data": {"path": str(corpus)}})
    assert recipe.model == SECTIONS["model"]() and recipe.train == SECTIONS["train"]()
    assert recipe.run_dir() == Path("runs") / "run"


def test_yaml_floats_without_a_dot(tmp_path, corpus):
    """`3e-4` is a float (YAML 1.2), though PyYAML's YAML 1.1 reads it as a string."""
    path = tmp_path / "r.yaml"
    path.write_text(f"data: {{path: {corpus}}}\ntrain: {{lr: 3e-4, weight_decay: 1E-2}}\n")
    recipe = load_recipe(path)
    assert recipe.train.lr == pytest.approx(3e-4) and recipe.train.weight_decay == pytest.approx(1e-2)


# --- dotted overrides ----------------------------------------------------------------------------------------


def test_overrides_apply(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(), [
        "train.lr=3e-4", "train.steps=7", "model.n_layer=3", "data.mode=pad", "data.max_examples=null",
        "sample.infill=The [MASK:2] king", "name=other", f"out_dir={tmp_path / 'elsewhere'}", "train.betas=[0.5, 0.6]",
        "backend.schedule=cosine", "tokenizer.path=", "data.split_field=null",
    ])
    assert recipe.train.lr == pytest.approx(3e-4) and isinstance(recipe.train.lr, float)
    assert recipe.train.steps == 7 and recipe.model.n_layer == 3 and recipe.data.mode == "pad"
    assert recipe.data.max_examples is None and recipe.data.split_field is None and recipe.tokenizer.path is None
    assert recipe.sample.infill == "The [MASK:2] king" and recipe.name == "other"
    assert recipe.run_dir() == tmp_path / "elsewhere"
    assert recipe.train.betas == (0.5, 0.6) and recipe.backend.schedule == "cosine"


def test_overrides_int_for_float_and_later_wins(write_recipe):
    recipe = load_recipe(write_recipe(), ["train.lr=1", "train.steps=5", "train.steps=9"])
    assert recipe.train.lr == 1.0 and isinstance(recipe.train.lr, float) and recipe.train.steps == 9


def test_overrides_build_missing_sections(tmp_path, corpus):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    recipe = load_recipe(path, [f"data.path={corpus}", "model.n_embd=64", "model.n_head=4"])
    assert recipe.data.path == str(corpus) and recipe.model.n_embd == 64


def test_overrides_do_not_touch_the_input():
    raw = {"data": {"path": "x.jsonl"}, "train": {"lr": 0.1}}
    out = apply_overrides(raw, ["train.lr=0.2", "model.n_layer=1"])
    assert raw == {"data": {"path": "x.jsonl"}, "train": {"lr": 0.1}}
    assert out["train"]["lr"] == 0.2 and out["model"] == {"n_layer": 1}


def test_parse_override():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override(" sample.infill = a=b ") == (["sample", "infill"], "a=b")
    assert parse_override("name=") == (["name"], None)


@pytest.mark.parametrize("override, needle", [
    ("train.lr=fast", "train.lr must be float"),
    ("train.steps=1.5", "train.steps must be int"),
    ("train.steps=true", "train.steps must be int"),
    ("model.tie_embeddings=1", "model.tie_embeddings must be bool"),
    ("data.path=[1]", "data.path must be str"),
    ("train.betas=0.9", "train.betas must be a list"),
    ("train.betas=[0.9, x]", "train.betas must be float"),
    ("train.nope=1", "unknown key 'train.nope'"),
    ("nope=1", "unknown key 'nope'"),
    ("train=3", "section 'train' must be a mapping"),
    ("train.lr.x=1", "'lr' is not a section"),
    ("train.lr", "KEY=VALUE"),
    ("train.lr=[", "not valid YAML"),
    ("train.steps=0", "train.steps=0 must be > 0"),
    ("sample.top_p=0", "sample.top_p=0.0 must lie in (0, 1]"),
    ("sample.infill=no hole", "sample.infill"),
    ("sample.remasking=3", "sample.remasking=3 is not allowed; choose one of low_confidence, random"),
])
def test_overrides_are_type_checked(write_recipe, override, needle):
    with pytest.raises(TextdiffError) as info:
        load_recipe(write_recipe(), [override])
    message = str(info.value)
    assert needle in message and "\n" not in message


# --- property: a Recipe or a TextdiffError, nothing else -----------------------------------------------------

def _section_hints(name: str, cls) -> dict:
    """{key: type} a section accepts: its dataclass's fields; for `backend`, every back-end's Options keys; for
    `sample`, also every sampler option."""
    if name == "backend":
        from textdiff.noising import BACKENDS

        return {k: v for b in BACKENDS.values() for k, v in typing.get_type_hints(b.Options).items()
                if k in {f.name for f in dataclasses.fields(b.Options)}}  # keys, not ClassVars
    hints = {k: v for k, v in typing.get_type_hints(cls).items() if k != "options"}
    if name == "sample":
        from textdiff.sampling import all_options

        hints.update({k: kind for k, (kind, _, _) in all_options().items()})
    return hints


HINTS = {name: _section_hints(name, cls) for name, cls in SECTIONS.items()}
FIELDS = {name: list(hints) for name, hints in HINTS.items()}
CHOICES = ["masked", "ar", "uniform", "embedding", "simplex", "edit", "loglinear", "cosine", "antithetic", "uniform", "count", "time", "rotary", "learned",
           "pack", "pad", "bible", "bpe", "wordpiece", "wordlevel", "sentencepiece", "bf16", "fp32", "stop", "skip",
           "ancestral", "confidence", "x.jsonl", "The [MASK:2] king", "[MASK:0]", ""]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=600), st.integers(), st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 63]),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0.0, max_value=1.0),
    st.text(max_size=12), st.sampled_from(CHOICES),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))


def _typed(hint):
    """Values of the field's own type, mostly plausible (so that more examples get past the first field)."""
    if typing.get_origin(hint) is typing.Union:
        return st.none() | _typed([a for a in typing.get_args(hint) if a is not type(None)][0])
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: train.log_to
        return st.lists(st.sampled_from(["jsonl", "tensorboard"]) | scalars, max_size=3)
    return {int: st.integers(min_value=-2, max_value=600) | st.integers(),
            float: st.floats(min_value=0.0, max_value=1.0) | st.floats() | st.integers(-2, 10) | st.just(10 ** 400),
            bool: st.booleans(), str: st.sampled_from(CHOICES) | st.text(max_size=12),
            tuple: st.lists(st.floats(min_value=0.0, max_value=1.0) | scalars, max_size=3),
            dict: st.dictionaries(st.sampled_from(["r", "alpha", "dropout", "target_modules", "rank"]),
                                  values, max_size=3)}[hint]  # model.lora


def _field(section: str, name: str):
    typed = _typed(HINTS[section][name])
    return _mostly(typed, values)


def _mostly(usual, rare, one_in: int = 12):
    """`usual`, but one draw in `one_in` from `rare`."""
    return st.integers(min_value=1, max_value=one_in).flatmap(lambda i: rare if i == 1 else usual)


def _section(name: str):
    fields = st.fixed_dictionaries({}, optional={k: _field(name, k) for k in FIELDS[name]})
    stray = st.dictionaries(st.sampled_from(FIELDS[name] + ["unknown_key"]), values, max_size=4)
    return _mostly(fields, st.one_of(stray, values))


_sections = {name: _section(name) for name in SECTIONS if name != "data"}
_data = st.fixed_dictionaries({"path": st.just("x.jsonl")},
                              optional={k: _field("data", k) for k in FIELDS["data"] if k != "path"})
_top = st.one_of(st.text(max_size=8), values)
recipes = _mostly(
    st.fixed_dictionaries({"data": _data}, optional={**_sections, "name": _top, "out_dir": _top, "type": _top}),
    st.one_of(st.fixed_dictionaries({}, optional={**_sections, "data": _section("data"), "name": values,
                                                  "out_dir": values, "type": values, "extra": values}), values),
    one_in=5,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=recipes)
def test_recipe_from_dict_gives_recipe_or_textdiff_error(raw):
    try:
        recipe = recipe_from_dict(raw)
    except TextdiffError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(recipe, Recipe)
    assert recipe_from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe  # a valid recipe round-trips


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=st.lists(st.text(max_size=20) | st.builds(lambda s, k, v: f"{s}.{k}={v}", st.sampled_from(list(SECTIONS)),
                                                            st.sampled_from(sum(FIELDS.values(), [])), st.text(max_size=8)),
                          max_size=4))
def test_random_overrides_give_recipe_or_textdiff_error(overrides, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "override-property.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump({"data": {"path": "x.jsonl"}}))
    try:
        assert isinstance(load_recipe(path, overrides), Recipe)
    except TextdiffError as e:
        assert "\n" not in str(e)


# --- property: any recipe FILE (YAML text, or bytes) gives a Recipe or a TextdiffError ---------------------------

_pieces = list("abdeinprstly_.:-[]{},!&*|>'\"#%@ \n\t0123456789") + [
    "train", "data", "path", "steps", "lr", "1e400", "~", "!!python/object", "!!binary", "&a ", "*a", "? ", "--- "]
yaml_ish = st.lists(st.sampled_from(_pieces), max_size=40).map("".join)
recipe_texts = st.one_of(
    yaml_ish,
    recipes.map(lambda raw: yaml.safe_dump(raw) if not isinstance(raw, float) else str(raw)),
    st.tuples(recipes.map(lambda raw: yaml.safe_dump(raw) if isinstance(raw, dict) else ""), yaml_ish).map("".join),
    st.binary(max_size=40),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=recipe_texts, overrides=st.lists(st.sampled_from(["train.lr=1e-3", "train.steps=3", "data.path=x.jsonl",
                                                              "train=1", "x=[", "model.n_head=0"]), max_size=2))
def test_random_recipe_files_give_recipe_or_textdiff_error(text, overrides, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "random-recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        recipe = load_recipe(path, overrides)
    except TextdiffError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(recipe, Recipe)
