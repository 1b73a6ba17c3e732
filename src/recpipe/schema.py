"""The configuration schema: one pydantic model per config group and choice, checked up front.

Every stage, ``recpipe compose`` and ``recpipe run`` call :func:`validate` on the composed config
before anything is read or written, so a wrong value (``model.epochs: "ten"``, an unknown key, a
ratio out of range) fails in a second with its key path, never as a traceback after training.
Variants are picked by their name key (``data.source``, ``split.name``, ``model.name``); values are
checked strictly (the YAML string ``"10"`` is not an integer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recpipe.errors import ConfigError
from recpipe.evaluation.registry import BEYOND_ACCURACY_K, PER_USER_BEYOND_ACCURACY, RANKING_METRICS, metric_key

INT32_MAX = 2**31 - 1

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Count = Annotated[int, Field(ge=1, le=INT32_MAX)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Number = Annotated[float, Field(allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1)]
OPTIMIZERS = ("adadelta", "adafactor", "adagrad", "adam", "adamax", "adamw", "ftrl", "lion", "nadam", "rmsprop", "sgd")
GROUPLENS_RELEASES = ("ml-100k", "ml-1m", "ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class Section(BaseModel):
    """A config section: strict types, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --- data ---------------------------------------------------------------------------------------


class Features(Section):
    item: list[Name] = []
    user: list[Name] = []


class Inputs(Section):
    """The files ingest reads, for dvc.yaml's ingest deps (conf/data/*.yaml derive them)."""

    interactions: Name | None = None
    items: Name | None = None
    users: Name | None = None
    # conf/data/files.yaml: the file standing in for a table that is not given ({None: <module>})
    unset: dict[str, Name] | None = None


class DataBase(Section):
    name: Name | None = None
    rating_scale: Annotated[list[Number], Field(min_length=2, max_length=2)] | None = None
    features: Features = Features()
    inputs: Inputs | None = None

    @field_validator("rating_scale")
    @classmethod
    def _ordered(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"expected [low, high] with low < high, got {list(v)}")
        return v


class BuiltinData(DataBase):
    source: Literal["movielens_builtin"]
    name: Literal["ml-100k"] = "ml-100k"


class GroupLensData(DataBase):
    source: Literal["grouplens"]
    name: Literal[GROUPLENS_RELEASES]  # type: ignore[valid-type]
    path: Name | None = None
    url: Name
    sha256: str | None = None
    cache_dir: Name = "data/downloads"

    @field_validator("sha256")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.fullmatch(v):
            raise ValueError(f"expected a sha256 digest (64 hex digits) or null, got {v!r}")
        return v


class InteractionColumns(Section):
    user: Name
    item: Name
    rating: Name | None = None
    timestamp: Name | None = None

    @model_validator(mode="after")
    def _distinct(self) -> InteractionColumns:
        mapped = [(k, v) for k, v in self.model_dump().items() if v is not None]
        for i, (key, column) in enumerate(mapped):
            for other, same in mapped[:i]:
                if column == same:
                    raise ValueError(
                        f"{other} and {key} are both mapped to the column {column!r}; each needs its own column"
                    )
        return self


class ItemColumns(Section):
    item: Name
    title: Name | None = None
    year: Name | None = None
    genres: Name | None = None


class UserColumns(Section):
    user: Name


class FilesData(DataBase):
    source: Literal["files"]
    interactions: Name
    columns: InteractionColumns
    items: Name | None = None
    item_columns: ItemColumns = ItemColumns(item="item_id", title="title", year="year", genres="genres")
    genres_sep: str | None = "|"
    users: Name | None = None
    user_columns: UserColumns = UserColumns(user="user_id")
    sep: Name = ","
    na_values: list[str] | None = None


class SyntheticData(DataBase):
    source: Literal["synthetic"]
    n_users: Count
    n_items: Count
    n_interactions: Count
    popularity_exponent: NonNegative = 1.0
    activity_exponent: NonNegative = 0.7
    n_genres: NonNegativeInt = 18
    seed: NonNegativeInt = 42


DATA: dict[str, type[Section]] = {
    "movielens_builtin": BuiltinData,
    "grouplens": GroupLensData,
    "files": FilesData,
    "synthetic": SyntheticData,
}


# --- split --------------------------------------------------------------------------------------

Ratios = Annotated[list[NonNegative], Field(min_length=3, max_length=3)]


def _sum_to_one(ratios: list[float]) -> list[float]:
    if abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(f"expected three shares summing to 1, got {list(ratios)}")
    return ratios


class SplitBase(Section):
    cold_items: Share = 0.0
    cold_seed: NonNegativeInt = 42


class RandomSplit(SplitBase):
    name: Literal["random"]
    ratios: Ratios = [0.8, 0.1, 0.1]
    seed: NonNegativeInt = 42
    _ratios = field_validator("ratios")(_sum_to_one)


class TemporalSplit(SplitBase):
    name: Literal["temporal"]
    val_start: NonNegativeInt | None = None
    test_start: NonNegativeInt | None = None
    ratios: Ratios = [0.8, 0.1, 0.1]
    _ratios = field_validator("ratios")(_sum_to_one)

    @model_validator(mode="after")
    def _ordered(self) -> TemporalSplit:
        if self.val_start is not None and self.test_start is not None and self.val_start > self.test_start:
            raise ValueError(f"val_start ({self.val_start}) must not be after test_start ({self.test_start})")
        return self


class LeaveLastSplit(SplitBase):
    name: Literal["leave_last"]
    n_val: NonNegativeInt = 1
    n_test: PositiveInt = 1


SPLITS: dict[str, type[Section]] = {"random": RandomSplit, "temporal": TemporalSplit, "leave_last": LeaveLastSplit}


# --- model --------------------------------------------------------------------------------------


class Trained(Section):
    """What every model trained by gradient descent has (recpipe.training)."""

    optimizer: Name = "adam"
    learning_rate: Positive
    batch_size: Count
    epochs: Count
    patience: PositiveInt
    min_epochs: PositiveInt = 1
    jit_compile: bool = False

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        if v.lower() not in OPTIMIZERS:
            raise ValueError(f"expected one of {', '.join(OPTIMIZERS)}, got {v!r}")
        return v


class MF(Trained):
    name: Literal["mf"]
    # conf/model/mf.yaml's defaults, except solver: configs and saved models from before the gibbs
    # solver have no solver key and were trained by gradient (MatrixFactorization reads it the same way)
    solver: Literal["gibbs", "gradient"] = "gradient"
    embedding_dim: PositiveInt
    burn_in: NonNegativeInt = 20
    posterior_rank: PositiveInt = 128
    rated_prior_columns: NonNegativeInt = 2048
    validate_every: PositiveInt = 10
    seed: NonNegativeInt = 42
    implicit_iterations: PositiveInt = 8
    implicit_alpha0: NonNegative = 0.446
    implicit_lam: NonNegative = 0.00107
    implicit_nu: NonNegative = 1.34
    implicit_weight: NonNegative = 0.0
    implicit_dim: PositiveInt = 16
    num_negatives: PositiveInt = 1
    l2: NonNegative = 0.0
    bias_l2: NonNegative = 0.0

    @model_validator(mode="after")
    def _rank_holds_the_samples(self) -> MF:
        if self.solver == "gibbs" and self.posterior_rank < self.embedding_dim:
            raise ValueError(
                f"model.posterior_rank ({self.posterior_rank}) must be >= model.embedding_dim "
                f"({self.embedding_dim}) with solver gibbs: the averaged samples are stored at posterior_rank"
            )
        return self


class NCF(Trained):
    name: Literal["ncf"]
    objective: Literal["rating", "implicit"] = "implicit"
    embedding_dim: PositiveInt
    layers: list[PositiveInt] = Field(min_length=1)
    dropout: Share = 0.0
    l2: NonNegative = 0.0
    num_negatives: PositiveInt = 4
    min_rating: Number | None = None


class Retrieval(Trained):
    """Two-tower retrieval settings shared by two_tower and hybrid."""

    embedding_dim: PositiveInt
    layers: list[PositiveInt] = []
    temperature: Positive | None = None
    sampling_correction: bool = True
    remove_accidental_hits: bool = True
    min_rating: Number | None = None


class TwoTower(Retrieval):
    name: Literal["two_tower"]


class Hybrid(Retrieval):
    name: Literal["hybrid"]
    item_id_dropout: Share = 0.0
    user_id_dropout: Share = 0.0


class Content(Section):
    name: Literal["content"]
    weights: dict[Name, NonNegative] = {}
    weighting: Literal["uniform", "rating", "centered"] = "uniform"


class Popularity(Section):
    name: Literal["popularity"]


class RandomModel(Section):
    name: Literal["random"]
    seed: NonNegativeInt = 42


class KNN(Section):
    name: Literal["item_knn", "user_knn"]
    k: Count
    shrink: NonNegative = 0.0


class EASEOptions(Section):
    """What ease and window_ease share (recpipe.models.classic.ease)."""

    lam: Positive | Literal["auto"] = "auto"
    grid: list[Positive] = []
    max_items: Count = 8_000
    tune_max_users: Count | None = None

    @model_validator(mode="after")
    def _grid_for_auto(self) -> EASEOptions:
        if self.lam == "auto" and not self.grid:
            raise ValueError("lam: auto picks the best value of grid, which is empty; give a grid or a number")
        return self


class EASE(EASEOptions):
    name: Literal["ease"]


class WindowEASE(EASEOptions):
    name: Literal["window_ease"]
    window: PositiveInt
    decay: Annotated[float, Field(gt=0, le=1)] = 1.0


class IALS(Section):
    name: Literal["ials"]
    factors: PositiveInt
    alpha0: Positive
    lam: Positive
    nu: NonNegative = 1.0
    iterations: PositiveInt
    init_std: Positive = 0.1
    seed: NonNegativeInt = 42


class MultVAE(Trained):
    name: Literal["mult_vae"]
    hidden: PositiveInt
    latent: PositiveInt
    dropout: Share = 0.5
    beta_max: NonNegative = 0.2
    anneal_steps: PositiveInt
    l2: NonNegative = 0.0
    min_rating: Number | None = None


class Blend(Section):
    name: Literal["blend"]
    members: dict[Name, dict[str, Any]] = Field(min_length=1)
    weight_grid: list[NonNegative] = Field(min_length=1)
    seed: NonNegativeInt = 42

    @field_validator("members")
    @classmethod
    def _known_members(cls, members: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key, member in members.items():
            name = member.get("name")
            if name not in BLENDABLE:
                problem = ValueError(f"expected a model config with name one of {', '.join(BLENDABLE)}, got {name!r}")
                error = {"type": "value_error", "loc": (key, "name"), "input": name, "ctx": {"error": problem}}
                raise ValidationError.from_exception_data("Blend", [error])  # type: ignore[list-item]
            try:
                MODELS[name].model_validate(member)
            except ValidationError as e:  # re-raised with the member's key in each error's location
                errors = [
                    {k: v for k, v in error.items() if k in ("type", "input", "ctx")} | {"loc": (key, *error["loc"])}
                    for error in e.errors(include_url=False)
                ]
                raise ValidationError.from_exception_data(e.title, errors) from None  # type: ignore[arg-type]
        return members


MODELS: dict[str, type[Section]] = {
    "mf": MF,
    "ncf": NCF,
    "two_tower": TwoTower,
    "hybrid": Hybrid,
    "content": Content,
    "popularity": Popularity,
    "random": RandomModel,
    "item_knn": KNN,
    "user_knn": KNN,
    "ease": EASE,
    "window_ease": WindowEASE,
    "ials": IALS,
    "mult_vae": MultVAE,
    "blend": Blend,
}
BLENDABLE = tuple(m for m in MODELS if m not in ("blend", "content", "hybrid"))
BASELINES = ("popularity", "random", "item_knn", "user_knn", "ease")


# --- the other groups ---------------------------------------------------------------------------


class Preprocess(Section):
    duplicates: Literal["latest", "first", "mean", "error"] = "latest"
    min_user_interactions: PositiveInt = 1
    min_item_interactions: PositiveInt = 1
    min_rating: Number | None = None


class Bootstrap(Section):
    metrics: list[Name] = []
    n_resamples: NonNegativeInt = 1000
    level: Annotated[float, Field(gt=0, lt=1)] = 0.95


class Evaluate(Section):
    ks: list[Count] = Field(min_length=1)
    batch_size: Count = 1024
    baselines: list[Literal[BASELINES]] = []  # type: ignore[valid-type]
    baseline_models: dict[Literal[BASELINES], dict[str, Any]] = {}  # type: ignore[valid-type]
    light_user_threshold: NonNegativeInt = 20
    max_users: Count | None = None
    bootstrap: Bootstrap = Bootstrap()


class Scann(Section):
    num_leaves: Count = 100
    num_leaves_to_search: Count = 10
    training_iterations: Count = 12
    dimensions_per_block: Count = 2
    num_reordering_candidates: Count | None = None


class Export(Section):
    index: Literal["brute_force", "scann"] = "brute_force"
    max_k: Count = 100
    precompute_max_scores: NonNegativeInt = 25_000_000
    registered_model_name: Name | None = None
    scann: Scann = Scann()


# --- engine -------------------------------------------------------------------------------------


class LocalEngine(Section):
    name: Literal["local"]


class RayEngine(Section):
    """engine=ray (recpipe.engines): the cluster's address (null: RAY_ADDRESS, else ``local``) and
    the training workers."""

    name: Literal["ray"]
    address: Name | None = None
    num_workers: PositiveInt = 2
    cpus_per_worker: Positive = 1.0
    storage_path: Name | None = None


ENGINES: dict[str, type[Section]] = {"local": LocalEngine, "ray": RayEngine}


class Mlflow(Section):
    experiment: Name


class Sweep(Section):
    objective: Name | None = None


class Seed(BaseModel):
    model_config = ConfigDict(strict=True)
    seed: NonNegativeInt


SECTIONS: dict[str, type[BaseModel] | None] = {
    "data": None,
    "split": None,
    "model": None,
    "engine": None,  # variants: DATA, SPLITS, MODELS, ENGINES
    "seed": Seed,
    "preprocess": Preprocess,
    "evaluate": Evaluate,
    "export": Export,
    "mlflow": Mlflow,
}
OPTIONAL_SECTIONS: dict[str, type[BaseModel]] = {"sweep": Sweep}  # recpipe run's job config adds it


# --- validation ---------------------------------------------------------------------------------


def validate(
    cfg: DictConfig | Mapping[str, Any], *, source: str = "the configuration", sections: Sequence[str] | None = None
) -> None:
    """Check the composed config; raise a ConfigError naming the first bad key's path.

    ``sections`` (default: all of ``SECTIONS``) must be present and valid; any other section present
    is checked too, and an unknown top-level key is an error. ``source`` (e.g. "params.yaml") is
    named in the message.
    """
    try:
        tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except OmegaConfBaseException as e:  # e.g. an interpolation ${...} that names nothing
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            getattr(e, "full_key", None) or "config", f"cannot resolve an interpolation: {problem}", hint=_hint(source)
        ) from None
    if not isinstance(tree, dict):
        raise ConfigError("config", f"expected a mapping at the top of {source}")
    hint = _hint(source)
    known = {**SECTIONS, **OPTIONAL_SECTIONS}
    for key in tree:
        if key not in known:
            raise ConfigError(str(key), f"unknown section; expected one of {', '.join(known)}", hint=hint)
    for key in sections if sections is not None else SECTIONS:
        if key not in tree:
            raise ConfigError(key, "missing (required section)", hint=hint)
    sections_tree = cast(dict[str, Any], tree)  # every key is a known section name (checked above)
    for key, value in sections_tree.items():
        variants = {
            "data": ("source", DATA),
            "split": ("name", SPLITS),
            "model": ("name", MODELS),
            "engine": ("name", ENGINES),
        }.get(key)
        if variants is not None:
            _check_variant(key, *variants, value, hint)
        elif key == "seed":
            _check(Seed, {"seed": value}, (), hint)
        else:
            schema = known[key]
            assert schema is not None  # only the variant groups (data, split, model, engine) have none
            _check(schema, value, (key,), hint)
    if "evaluate" in sections_tree:
        models = sections_tree["evaluate"].get("baseline_models") or {}
        for name, params in models.items():
            _check(MODELS[name], {"name": name, **(params or {})}, ("evaluate", "baseline_models", name), hint)
        for i, name in enumerate(tree["evaluate"].get("baselines") or []):
            if name not in models:
                raise ConfigError(
                    f"evaluate.baselines[{i}]",
                    f"{name!r} has no config in evaluate.baseline_models "
                    f"(conf/config.yaml composes one per baseline from conf/model/{name}.yaml)",
                    hint=hint,
                )
        _check_bootstrap_metrics(tree["evaluate"], hint)


def _check_bootstrap_metrics(evaluate: Mapping[str, Any], hint: str) -> None:
    """Every bootstrap metric is a per-user metric evaluate computes (a typo would get no interval)."""
    ks = evaluate["ks"]
    known = [metric_key(m, k) for m in RANKING_METRICS for k in ks]
    known += [metric_key(m, BEYOND_ACCURACY_K) for m in PER_USER_BEYOND_ACCURACY]
    for i, name in enumerate((evaluate.get("bootstrap") or {}).get("metrics") or []):
        if name not in known:
            raise ConfigError(
                f"evaluate.bootstrap.metrics[{i}]",
                f"expected a per-user metric: one of {', '.join(RANKING_METRICS)} at a k of evaluate.ks "
                f"(e.g. ndcg_at_{ks[0]}), or {', '.join(PER_USER_BEYOND_ACCURACY)} at {BEYOND_ACCURACY_K}; "
                f"got {_show(name)}",
                hint=hint,
            )


def _hint(source: str) -> str:
    return f"Fix it in {source}" + (" (or recompose it with `recpipe compose`)" if source.endswith(".yaml") else "")


def _check_variant(group: str, tag: str, variants: Mapping[str, type[Section]], section: Any, hint: str) -> None:
    if not isinstance(section, dict):
        raise ConfigError(group, f"expected a mapping, got {_show(section)}", hint=hint)
    choice = section.get(tag)
    if not isinstance(choice, str) or choice not in variants:
        raise ConfigError(f"{group}.{tag}", f"expected one of {', '.join(variants)}, got {_show(choice)}", hint=hint)
    _check(variants[choice], section, (group,), hint)


def _check(schema: type[BaseModel], value: Any, prefix: tuple[str, ...], hint: str) -> None:
    try:
        schema.model_validate(value)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        raise ConfigError(_key(prefix, error["loc"]), describe(error), hint=hint) from None


def _key(prefix: tuple[str, ...], loc: tuple[Any, ...]) -> str:
    """Dotted key path; list positions as ``[i]`` (``evaluate.ks[2]``)."""
    key = ""
    for part in (*prefix, *loc):
        if isinstance(part, int):
            key += f"[{part}]"
        elif not str(part).startswith(("function-", "literal[", "nullable[", "union[", "constrained-")):
            key += f".{part}" if key else str(part)
    return key or "config"


_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "finite_number": "a finite number",
    "string_too_short": "a non-empty string",
}


def describe(error: Mapping[str, Any]) -> str:
    """A pydantic error as "expected ..., got ...", the wording recpipe uses everywhere."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return "missing (required key)"
    if kind == "extra_forbidden":
        return f"unknown key (value {_show(got)}); check its spelling against conf/"
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        expected = f"a value {op} {bound}" if kind != "greater_than_equal" or bound != 1 else "a positive integer"
    elif kind == "literal_error":
        expected = f"one of {ctx.get('expected', '')}".replace("'", "")
    elif kind in ("too_short", "too_long"):
        expected = (
            f"{'at least' if kind == 'too_short' else 'at most'} {ctx.get('min_length', ctx.get('max_length'))} item(s)"
        )
    elif kind == "value_error":
        return str(ctx.get("error", error["msg"]))

    else:
        expected = error["msg"][0].lower() + error["msg"][1:]
    return f"expected {expected}, got {_show(got)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
