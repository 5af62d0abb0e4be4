"""Strict, typed stage configs loaded from `params/*.yaml` or a notebook's parameters.

A profile has a `run` section shared by every stage (run name, output root, seed) and one
section per stage. A stage config is a dataclass holding the shared keys plus its section's
keys; the notebook's `parameters` cell holds exactly the same names. Unknown keys, missing
keys, wrong types, non-finite numbers and impossible values fail at once, naming the key and
where it came from; so do a profile that is not UTF-8 or repeats a key, a run name that is
not a plain folder name, and a parameter injected into a notebook (`papermill -p`) that its
parameters cell does not declare.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import math
import os
import types
import unicodedata
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

RUN_SECTION = "run"
# Run-section keys a profile (or a manifest written before they existed) may leave out.
RUN_OPTIONAL = {"threads": 0, "train_jobs": 1}
# Folders of an output root that are not runs: a run may not be called so.
RESERVED_RUN_NAMES = ("cache",)
# The longest file name most filesystems take (ext4, xfs, btrfs: 255 bytes), where
# `os.pathconf` cannot tell.
NAME_MAX = 255
# The comment papermill writes at the top of the cell it injects (`papermill -p`, the runner).
INJECTED_HEADER = "# Parameters"
# The one notebook parameter that is no config key: a profile whose values replace every
# parameter left at its default (`with_profile`). The defaults are DEFAULT_PROFILE's values.
PROFILE_PARAMETER = "profile"
DEFAULT_PROFILE = "params/tiny.yaml"


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
        if not math.isfinite(value):  # YAML .inf / .nan, papermill -p x inf
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
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
    threads: int      # torch CPU threads of every stage (0: auto, `runs.thread_count`)
    train_jobs: int   # trainings a stage runs side by side on a CPU (0: one per thread; `parallel`)

    # Set by subclasses: the profile section this config mirrors.
    SECTION: typing.ClassVar[str] = ""
    # How a manifest written by an older version reads (`from_manifest`): keys added since,
    # with the value those runs used, and keys renamed since (old name -> new).
    MANIFEST_DEFAULTS: typing.ClassVar[dict[str, Any]] = {}
    RENAMED_KEYS: typing.ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            where = self._key(f.name)
            setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], where))
        self.require(self.threads >= 0, "threads", "must be >= 0 (0: auto)")
        self.require(self.train_jobs >= 0, "train_jobs", "must be >= 0 (0: one per thread)")
        problem = run_name_problem(self.run_name)
        self.require(problem is None, "run_name", problem or "")
        for f in dataclasses.fields(self):  # a model or data path that never resolves
            value = getattr(self, f.name)
            loop = path_loop_problem(value) if isinstance(value, str) else None
            if loop:
                raise ConfigError(f"{self._key(f.name)}: {loop}")
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
        values = {**RUN_OPTIONAL, **values}
        unknown = sorted(set(values) - set(expected))
        missing = [k for k in expected if k not in values]
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) for stage '{cls.SECTION}': {unknown}; "
                              f"expected {expected}")
        if missing:
            raise ConfigError(f"{source}: missing key(s) for stage '{cls.SECTION}': {missing}")
        return _build(cls, source, dict(values))

    @classmethod
    def from_manifest(cls, params: Mapping[str, Any], stage: str):
        """The config a stage ran with, from its manifest's params: a key renamed since
        (`RENAMED_KEYS`) reads under its new name, a key added since (`MANIFEST_DEFAULTS`)
        as the value the run used."""
        renamed = {cls.RENAMED_KEYS.get(k, k): v for k, v in params.items()}
        return cls.from_mapping({**cls.MANIFEST_DEFAULTS, **renamed}, f"{stage} manifest")

    @classmethod
    def from_params(cls, namespace: Mapping[str, Any], source: str = "notebook parameters"):
        """Pick this config's keys from a notebook namespace (its parameters cell).

        A parameter papermill injected that the config does not know (`papermill -p typo 3`,
        which papermill only warns about) is an error naming it: otherwise the notebook would
        run on its defaults and overwrite the stage's results."""
        injected = injected_parameters(namespace)
        unknown = sorted(set(injected) - set(cls.keys()) - {PROFILE_PARAMETER})
        if unknown:
            raise ConfigError(f"{source}: parameter(s) {unknown} are not declared by the "
                              f"notebook's parameters cell (stage '{cls.SECTION}'); "
                              f"it declares {cls.keys()}")
        missing = [k for k in cls.keys() if k not in namespace]
        if missing:
            raise ConfigError(f"{source}: missing parameter(s) {missing}")
        values = {k: namespace[k] for k in cls.keys()}
        profile = namespace.get(PROFILE_PARAMETER) or ""
        if profile:
            values, source = cls.with_profile(values, profile, set(injected)), str(profile)
        return _build(cls, source, values)

    @classmethod
    def with_profile(cls, values: Mapping[str, Any], profile: str | Path,
                     keep: set[str] = frozenset()) -> dict[str, Any]:
        """A notebook's parameters on `profile`: every parameter still at its default (the
        value DEFAULT_PROFILE gives it, as the parameters cell does) takes the profile's
        value, the values `synergy run --profile` would use; one changed by hand, or named
        in `keep` (those papermill injected), stays."""
        root = project_root()
        defaults = profile_section(load_profile(root / DEFAULT_PROFILE), cls.SECTION,
                                   DEFAULT_PROFILE)
        chosen = profile_section(load_profile(root / profile), cls.SECTION, profile)
        defaults, chosen = {**RUN_OPTIONAL, **defaults}, {**RUN_OPTIONAL, **chosen}
        return {k: v if k in keep or k not in chosen or v != defaults.get(k) else chosen[k]
                for k, v in values.items()}

    @classmethod
    def from_profile(cls, path: str | Path):
        profile = load_profile(path)
        return cls.from_mapping(profile_section(profile, cls.SECTION, path), str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def injected_parameters(namespace: Mapping[str, Any]) -> list[str]:
    """Names assigned by the cell papermill injected into this kernel, read from IPython's
    input history (`In`); [] outside papermill (JupyterLab, plain Python)."""
    history = namespace.get("In")
    if not isinstance(history, list):
        return []
    cells = [c for c in history if isinstance(c, str) and c.lstrip().startswith(INJECTED_HEADER)]
    if not cells:
        return []
    try:
        tree = ast.parse(cells[-1])
    except SyntaxError:
        return []
    return [t.id for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)]


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot name a run folder (None: it can): it must be one plain folder name."""
    if name.strip() == "":
        return "must be a non-empty folder name"
    if name != name.strip():
        return "must not start or end with whitespace"
    if name in (".", "..") or name.startswith("."):
        return "must be a plain folder name, not starting with '.'"
    if any(sep in name for sep in ("/", "\\", "\0")):
        return "must be a plain folder name without a path separator"
    control = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if control:
        return (f"must not hold control characters (found {control[0]!r}; a newline "
                "breaks every path and log line that names the run)")
    if name in RESERVED_RUN_NAMES:
        return f"is reserved for the output root's {name}/ folder"
    # Stage files add up to ~40 bytes to the name (`.<name>.tmp-<pid>-<random>`).
    if len(name.encode()) > NAME_MAX - 64:
        return (f"is {len(name.encode())} bytes long; at most {NAME_MAX - 64} fit the "
                f"filesystem's {NAME_MAX}-byte file names")
    return None


def output_root_problem(output_root: str | Path, run_name: str) -> str | None:
    """Why a run cannot be written under `output_root` (None: it can): a file where a folder
    must be, or a folder this user may not write (read-only mount, another owner)."""
    root = Path(output_root)
    for path in (root / run_name, root):
        if path.exists() and not path.is_dir():
            return f"{path} is a file, not a folder"
    existing = next((p for p in (root / run_name, root, *root.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable (read-only, or owned by another user)"
    return None


def path_loop_problem(value: str) -> str | None:
    """A symlink loop at a path a parameter names (None: none there)."""
    if not value or "\n" in value or len(value) > 4096:
        return None
    path = Path(value).expanduser()
    for candidate in ((path,) if path.is_absolute() else (project_root() / path, path)):
        try:
            if not os.path.islink(candidate):
                continue
            os.stat(candidate)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"{candidate}: symlink loop ({exc.strerror})"
        except ValueError:
            pass
    return None


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


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error
    (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"line {line}: duplicate key '{key}' (first on line "
                                  f"{seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """A YAML file as data: UTF-8 only, no key twice in a mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: profile not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: "
                          f"{exc.object[exc.start:exc.start + 1]!r})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def load_profile(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = read_yaml(path)
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
