"""Strict, typed stage configs loaded from `params/*.yaml` or a notebook's parameters.

A profile has a `run` section shared by every stage (run name, output root, seed) and one
section per stage. A stage config is a dataclass holding the shared keys plus its section's
keys; the notebook's `parameters` cell holds exactly the same names. Unknown keys, missing
keys, wrong types and impossible values fail at once, naming the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

RUN_SECTION = "run"


class ConfigError(ValueError):
    """A parameter is unknown, missing, mistyped or impossible."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {_coerce(k, args[0], f"{where} key"): _coerce(v, args[1], f"{where}.{k}")
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected bool, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected str, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {tp!r}")


@dataclasses.dataclass
class StageConfig:
    """Keys shared by every stage (the profile's `run` section)."""

    run_name: str
    output_root: str
    seed: int

    # Set by subclasses: the profile section this config mirrors.
    SECTION: typing.ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            where = self._key(f.name)
            setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], where))
        self.require(self.run_name.strip() != "" and "/" not in self.run_name, "run_name",
                     "must be a non-empty name without '/'")
        # Relative to the project, not the kernel's folder (JupyterLab runs in notebooks/).
        self.output_root = str(project_root() / self.output_root)
        self.validate()

    def _key(self, name: str) -> str:
        shared = {f.name for f in dataclasses.fields(StageConfig)}
        return f"{RUN_SECTION}.{name}" if name in shared else f"{self.SECTION}.{name}"

    def require(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{self._key(key)}: {message}, got {getattr(self, key)!r}")

    def validate(self) -> None:
        """Impossible values; subclasses extend."""

    def require_sampling(self, prefix: str = "") -> None:
        """Checks `<prefix>temperature`, `<prefix>top_p` and `<prefix>top_k`."""
        t, p, k = (f"{prefix}temperature", f"{prefix}top_p", f"{prefix}top_k")
        self.require(getattr(self, t) >= 0, t, "must be >= 0")
        self.require(0 < getattr(self, p) <= 1, p, "must be in (0, 1]")
        self.require(getattr(self, k) >= 0, k, "must be >= 0 (0 disables)")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str):
        """Build from exactly this config's keys; anything else in `values` is an error."""
        expected = cls.keys()
        unknown = sorted(set(values) - set(expected))
        missing = [k for k in expected if k not in values]
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) for stage '{cls.SECTION}': {unknown}; "
                              f"expected {expected}")
        if missing:
            raise ConfigError(f"{source}: missing key(s) for stage '{cls.SECTION}': {missing}")
        return _build(cls, source, dict(values))

    @classmethod
    def from_params(cls, namespace: Mapping[str, Any], source: str = "notebook parameters"):
        """Pick this config's keys from a notebook namespace (its parameters cell)."""
        missing = [k for k in cls.keys() if k not in namespace]
        if missing:
            raise ConfigError(f"{source}: missing parameter(s) {missing}")
        return _build(cls, source, {k: namespace[k] for k in cls.keys()})

    @classmethod
    def from_profile(cls, path: str | Path):
        profile = load_profile(path)
        return cls.from_mapping(profile_section(profile, cls.SECTION, path), str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, source: str, values: dict[str, Any]):
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def project_root(start: Path | None = None) -> Path:
    """The nearest folder (from the working directory up) holding `params/`; else cwd."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    return here


def load_profile(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: profile not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or RUN_SECTION not in data:
        raise ConfigError(f"{path}: a profile is a mapping with a '{RUN_SECTION}' section")
    return data


def profile_section(profile: Mapping[str, Any], section: str, path: str | Path) -> dict:
    """The shared `run` keys merged with one stage section."""
    if section not in profile:
        raise ConfigError(f"{path}: no section '{section}'")
    run, own = profile[RUN_SECTION], profile[section]
    if not isinstance(run, dict) or not isinstance(own, dict):
        raise ConfigError(f"{path}: sections '{RUN_SECTION}' and '{section}' must be mappings")
    clash = sorted(set(run) & set(own))
    if clash:
        raise ConfigError(f"{path}: keys {clash} appear in both '{RUN_SECTION}' and '{section}'")
    return {**run, **own}
