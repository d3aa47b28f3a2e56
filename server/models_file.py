"""The models file (``--models FILE``): which versions one server holds and where labels point.

Schema (YAML), after Triton / TF Serving (versions, labels) and Seldon (experiments, mirrors):

    default: ranker@stable        # what a request without ``model`` gets
    models:
      - {name: ranker, version: teacher, path: artifacts/demo/teacher, engine: torch}
      - {name: ranker, version: int8, path: artifacts/demo/compressed/int8, engine: auto}
    labels:
      ranker:
        stable: teacher                       # a label -> one version
        canary:                               # an experiment: weighted arms, sticky per key
          split: {teacher: 90, int8: 10}
        mirror:                               # one version, a share mirrored to a shadow
          version: teacher
          shadow: int8
          shadow_percent: 100

A request names ``name``, ``name:version`` or ``name@label``; a bare name means its ``stable``
label, or its only version. Everything here is checked before any weight loads: a duplicate
``name:version``, an unknown engine, a negative weight or weights that sum to 0, a label that
points at nothing each fail with a message naming the entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"  # no ':' or '@': they separate the parts
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]
STABLE = "stable"  # the label a bare model name means


class ModelsFileError(ValueError):
    """The models file is unreadable or inconsistent; the message names the entry."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelEntry(_Strict):
    """One version: a checkpoint folder and how to run it (server settings give the rest)."""

    name: Name
    version: Name
    path: str
    engine: Literal["auto", "torch", "vllm"] = "auto"
    dtype: Literal["auto", "bf16", "fp32"] | None = None  # None: the server's --dtype
    torch_kernel: Literal["auto", "dequantized", "fbgemm", "onednn", "int4pack"] | None = None

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"


class Route(_Strict):
    """Where a label sends requests: one version, or weighted arms (an A/B experiment), and
    optionally a shadow version that gets a copy of ``shadow_percent`` of them."""

    version: Name | None = None
    split: dict[str, float] | None = None
    shadow: Name | None = None
    shadow_percent: float = Field(default=100.0, ge=0, le=100)

    @model_validator(mode="after")
    def _one_target(self) -> Route:
        if (self.version is None) == (self.split is None):
            raise ValueError("give either version or split")
        if self.split is not None:
            if not self.split:
                raise ValueError("split: no arms")
            for v, w in self.split.items():
                if w < 0:
                    raise ValueError(f"split: weight of {v!r} is negative ({w:g})")
            if sum(self.split.values()) <= 0:
                raise ValueError("split: the weights sum to 0")
        return self

    @property
    def arms(self) -> dict[str, float]:
        """version -> weight (a plain label is one arm of weight 1)."""
        return dict(self.split) if self.split is not None else {self.version: 1.0}

    def versions(self) -> set[str]:
        return set(self.arms) | ({self.shadow} if self.shadow else set())


def parse_route(value: str | dict | Route) -> Route:
    """A label's target as written: a version string or a route mapping."""
    if isinstance(value, Route):
        return value
    if isinstance(value, str):
        return Route(version=value)
    return Route.model_validate(value)


class ModelsFile(_Strict):
    models: list[ModelEntry] = Field(min_length=1)
    labels: dict[Name, dict[Name, Route]] = Field(default_factory=dict)
    default: str | None = None  # None: the first entry's name

    @model_validator(mode="before")
    @classmethod
    def _label_strings(cls, data):
        """``stable: teacher`` is short for ``stable: {version: teacher}``."""
        if isinstance(data, dict) and isinstance(data.get("labels"), dict):
            data = dict(data)
            data["labels"] = {
                name: {
                    lab: ({"version": t} if isinstance(t, str) else t)
                    for lab, t in (labels or {}).items()
                }
                for name, labels in data["labels"].items()
            }
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelsFile:
        seen: set[str] = set()
        for e in self.models:
            if e.key in seen:
                raise ValueError(f"models: {e.key} appears twice (name:version must be unique)")
            seen.add(e.key)
        names = {e.name for e in self.models}
        for name, labels in self.labels.items():
            if name not in names:
                raise ValueError(f"labels: {name!r} is not a model name in models")
            for label, route in labels.items():
                check_route(name, label, route, {e.version for e in self.models if e.name == name})
        name, version, label = parse_ref(self.default_ref)
        if name not in names:
            raise ValueError(f"default: {self.default_ref!r} names no model in models")
        if version is not None and f"{name}:{version}" not in seen:
            raise ValueError(f"default: {self.default_ref!r} is not in models")
        if label is not None and label not in self.labels.get(name, {}):
            raise ValueError(f"default: {self.default_ref!r} is not a label in labels")
        return self

    @property
    def default_ref(self) -> str:
        return self.default or self.models[0].name


def check_route(name: str, label: str, route: Route, versions: set[str]) -> None:
    """Every version a label names must exist for that model name."""
    for v in sorted(route.versions()):
        if v not in versions:
            known = ", ".join(sorted(versions)) or "none"
            raise ValueError(
                f"labels: {name}@{label} points at {name}:{v}, which is not in models "
                f"(versions of {name}: {known})"
            )


def load_models_file(path: str | Path) -> ModelsFile:
    """Parses and checks the file; relative checkpoint paths are relative to the file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ModelsFileError(f"models file {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ModelsFileError(f"models file {p} is not valid YAML: {exc}") from None
    try:
        parsed = ModelsFile.model_validate(data)
    except ValidationError as exc:
        raise ModelsFileError(f"models file {p}: {_describe(exc)}") from None
    for e in parsed.models:
        if not Path(e.path).is_absolute() and not Path(e.path).exists():
            candidate = p.parent / e.path
            if candidate.exists():
                e.path = str(candidate)
    return parsed


def _describe(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()))
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def single_model(path: str, name: str, engine: str = "auto") -> ModelsFile:
    """``--model DIR``: the one-entry file (version ``1``, labelled ``stable``)."""
    return ModelsFile(
        models=[ModelEntry(name=name, version="1", path=path, engine=engine)],
        labels={name: {STABLE: Route(version="1")}},
        default=name,
    )


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``name`` -> (name, None, None); ``name:version`` -> (name, version, None);
    ``name@label`` -> (name, None, label)."""
    if "@" in ref:
        name, _, label = ref.partition("@")
        return name, None, label
    if ":" in ref:
        name, _, version = ref.partition(":")
        return name, version, None
    return ref, None, None
