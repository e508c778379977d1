"""The one typed configuration tree of a training run, loaded from YAML.

``Config`` composes the sections of the other subsystems (``model``, ``data``,
``loss``, ``synth``) with the engine's own (``optim``, ``schedule``,
``train``). The dataclass defaults are the CPU demo that ``pedcrowd train``
runs with no arguments; ``configs/cpu_demo.yaml`` states them.

Loading is strict, in the nanoGPT spirit: an unknown key or a value of the
wrong type is a :class:`PedcrowdError` naming the file and the dotted key, with
a close-match suggestion. A file may name one ``base:`` file (relative to
itself) whose values it overrides; a base that has a base of its own is an
error, so a config never hides behind a chain (what mmdetection's ``_base_``
chains are criticised for). ``--set a.b=value`` overrides are parsed as YAML
scalars and type-checked like the file.

Value ranges are declared on the fields themselves, as dataclass metadata
(``lr: float = field(default=0.08, metadata={"range": "> 0"})``, the forms in
:mod:`pedcrowd.config_check`). The loader checks them after the type, for
every number of a list or tuple too, so ``box_nms_thresh: 1.5``, ``epochs: 0``
or a NaN are one-line errors naming the file and the key. Infinity is outside
every range that does not name ``inf`` as a bound. Every int and float field of
the tree declares a range (a test walks the tree).

Relations between values (``rpn_fg_iou_thresh >= rpn_bg_iou_thresh``, an ordered
``scale_range``, a non-empty ``aspect_ratios``) are a section's ``validate()``
method, raising ``ValueError``; :func:`~pedcrowd.config_check.check_config` runs
them, and the ranges again, on the whole tree once the file and every ``--set`` are applied (so the
order of ``--set`` options does not matter), and :func:`pedcrowd.engine.train.fit`
runs it on a config built in Python.

The YAML reader refuses a key given twice in one mapping and a file whose
aliases expand beyond :data:`MAX_YAML_NODES` values (a "billion laughs" file).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pedcrowd.config_check import check_config, check_range, short_repr
from pedcrowd.data.config import DataConfig, SynthConfig
from pedcrowd.engine.device import parse_device
from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import write_text_atomic
from pedcrowd.losses.config import LossConfig, apply_loss_preset
from pedcrowd.model.config import ModelConfig, PostprocessConfig


@dataclass
class OptimConfig:
    """Optimiser: SGD with momentum (the papers') or AdamW."""

    name: Literal["sgd", "adamw"] = "sgd"
    # for the whole batch (no automatic scaling with batch size or GPUs)
    lr: float = field(default=0.08, metadata={"range": "> 0"})
    momentum: float = field(default=0.9, metadata={"range": "[0, 1)"})  # SGD only
    weight_decay: float = field(default=1e-4, metadata={"range": ">= 0"})
    # max global L2 norm of the gradients; null disables
    grad_clip: float | None = field(default=35.0, metadata={"range": ">= 0"})


@dataclass
class ScheduleConfig:
    """Learning-rate schedule per iteration: linear warm-up, then step or cosine."""

    name: Literal["step", "cosine"] = "cosine"
    # step: epochs after which lr *= gamma
    steps: list[int] = field(default_factory=list, metadata={"range": ">= 0"})
    gamma: float = field(default=0.1, metadata={"range": "> 0"})
    # linear ramp from warmup_factor * lr to lr
    warmup_iters: int = field(default=200, metadata={"range": ">= 0"})
    warmup_factor: float = field(default=0.001, metadata={"range": "(0, 1]"})
    # cosine: final lr = min_lr_factor * lr
    min_lr_factor: float = field(default=0.0, metadata={"range": "[0, 1]"})


@dataclass
class TrainConfig:
    """The loop: epochs, batches, precision, seeding, evaluation, logging."""

    epochs: int = field(default=8, metadata={"range": ">= 1"})
    # per process (per GPU under DDP)
    batch_size: int = field(default=8, metadata={"range": ">= 1"})
    # mixed precision: CUDA float16 autocast with a GradScaler; CPU bfloat16 autocast where
    # the CPU has bfloat16 instructions (else float32, with a warning); the crowd losses,
    # samplers and post-processing compute in float32 either way (pedcrowd/precision.py)
    amp: bool = False
    # model init, data order, RPN/RoI sampling (augmentations: data.seed)
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]"})
    # evaluate on the val split every N epochs (and after the last)
    eval_every: int = field(default=2, metadata={"range": ">= 0"})
    # iterations between metrics.jsonl lines
    log_every: int = field(default=20, metadata={"range": ">= 1"})
    # also write last.pt every N iterations (0: at epoch ends only)
    checkpoint_every: int = field(default=0, metadata={"range": ">= 0"})
    # stop after this many steps in a row with a non-finite loss
    max_nonfinite_steps: int = field(default=5, metadata={"range": ">= 1"})
    # torch CPU threads per process; null: torch's default (one per core). The float
    # rounding of a CPU step depends on it, so runs compare bit for bit only at the same
    # count (the README's demo table says which it used)
    threads: int | None = field(default=None, metadata={"range": ">= 1"})
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out_dir: str = "runs/demo"


# The CPU demo's departures from the model section's defaults (ModelConfig is
# sized for the paper configs): 256 x 512 inputs (at 192 x 384 the demo reached
# Reasonable 40 %, at 256 x 512 26 %, README "The CPU demo"); 64 sampled RoIs per
# image instead of 256 (on the CPU the RoIAlign backward pass dominates the step
# and scales with them), half of them positive (32 per image) instead of a quarter.
# A config file's model section is read over these values (see from_dict).
DEMO_MODEL: dict[str, Any] = {
    "backbone": "tiny_fpn", "weights": "none", "min_size": 256, "max_size": 512,
    "box_batch_size_per_image": 64, "box_positive_fraction": 0.5,
}


@dataclass
class Config:
    """A whole training run.

    ``synth`` is the synthetic-crowd generator: when set, the data set at
    ``data.root`` is generated there first (once; cached). Real-data configs set
    ``synth: null``.
    """

    model: ModelConfig = field(default_factory=lambda: ModelConfig(**DEMO_MODEL))
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synth: SynthConfig | None = field(default_factory=SynthConfig)
    # second-stage post-processing at evaluation and inference (hard NMS by default)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)


# ----------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """The config of ``path`` (the defaults when None) with ``--set`` overrides applied.

    Args:
        path: a YAML file; its optional ``base:`` names one file it overrides.
        overrides: ``"a.b=value"`` strings, the value parsed as a YAML scalar.
    """
    source = str(path) if path is not None else "defaults"
    raw = _read_with_base(Path(path)) if path is not None else {}
    cfg = from_dict(Config, raw, source=source)
    cfg = apply_overrides(cfg, overrides)
    check_config(cfg, config_source(path, overrides))
    return cfg


def resolve_config(
    path: str | Path | Config | None = None,
    *,
    loss: str | None = None,
    cls_loss: str | None = None,
    box_loss: str | None = None,
    sampler: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | None = None,
) -> Config:
    """The config ``pedcrowd train`` runs: ``path``, then the ``loss`` preset, then
    ``loss.cls``/``loss.box``/``loss.sampler``, then each ``--set``, then the device.

    Args:
        path: a YAML file, None for the defaults (the CPU demo), or a :class:`Config`
            already loaded (the crowd benchmark's rows start from its base config).
        loss: a crowd-loss preset (``none``, ``nms``, ``rep``, ``nms+rep``;
            :data:`pedcrowd.losses.config.LOSS_PRESETS`).
        cls_loss, box_loss, sampler: ``loss.cls``, ``loss.box`` and ``loss.sampler``,
            applied before ``overrides`` (so a ``--set`` of the same key wins).
        overrides: ``"a.b=value"`` strings (``--set``).
        device: ``train.device`` (``auto``, ``cpu``, ``cuda``), applied last.

    The relations between values are checked once every value is set, so the
    order of the overrides does not matter.
    """
    sets = list(overrides)
    if device is not None:
        parse_device(device)  # its own message, before anything is read
        sets.append(f"train.device={device}")
    for key, value in (("cls", cls_loss), ("box", box_loss), ("sampler", sampler)):
        if value is not None:
            sets.insert(0, f"loss.{key}={value}")  # before --set, after --loss
    if isinstance(path, Config):
        cfg, path = path, None
    else:
        cfg = load_config(path)
    if loss is not None:
        cfg = dataclasses.replace(cfg, loss=apply_loss_preset(cfg.loss, loss))
    cfg = apply_overrides(cfg, sets)
    check_config(cfg, config_source(path, sets))  # relations, once every value is set
    return cfg


def run_config_path(out_dir: str | Path | None) -> Path | None:
    """The ``config.yaml`` a resumed run was configured with (``out_dir``, or the default
    ``train.out_dir``), None when it has none."""
    saved = Path(out_dir if out_dir is not None else Config().train.out_dir) / "config.yaml"
    return saved if saved.is_file() else None


MAX_YAML_NODES = 100_000  # values of a config once its aliases are expanded (the biggest has ~300)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class names it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short_repr(key)} given twice (first at line {first})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str, source: str) -> Any:
    """``text`` parsed as YAML (safe types only), strictly: duplicate keys and alias bombs
    are PedcrowdError naming ``source``."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise PedcrowdError(f"{source}: not valid YAML ({_yaml_problem(e)})") from None
    except RecursionError:
        raise PedcrowdError(f"{source}: not valid YAML (nested too deeply)") from None
    _check_expanded_size(data, source)
    return data


def _check_expanded_size(data: Any, source: str) -> None:
    """PedcrowdError when ``data`` holds more than MAX_YAML_NODES values counted with
    repetition: aliases share objects, but type checking and error messages expand them."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise PedcrowdError(
                f"{source}: refused: its aliases expand to more than {MAX_YAML_NODES} values"
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def config_source(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """How an error about the finished config names where it came from."""
    if path is None:
        return "--set" if overrides else "defaults"
    return f"{path} with --set" if overrides else str(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PedcrowdError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise PedcrowdError(
            f"{path}: not valid YAML (byte 0x{e.object[e.start]:02x} at offset {e.start} is not UTF-8)"
        ) from None
    except OSError as e:
        raise PedcrowdError(f"{path}: cannot read ({e.strerror or e})") from None
    data = yaml_load(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PedcrowdError(f"{path}: the top level must be a mapping of sections")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: the parser's problem and where (PyYAML's own message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _read_with_base(path: Path) -> dict[str, Any]:
    data = _read_yaml(path)
    base_name = data.pop("base", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise PedcrowdError(f"{path}: 'base' must be a file name")
    base_path = (path.parent / base_name).resolve()
    base = _read_yaml(base_path)
    if "base" in base:
        raise PedcrowdError(
            f"{path}: its base {base_path} has a base of its own; only one base level is allowed"
        )
    return _deep_merge(base, data)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(cls: type, data: Any, source: str, prefix: str = "", base: Any = None) -> Any:
    """A ``cls`` dataclass instance from a mapping, strictly checked.

    Missing keys take their values from ``base`` (an instance of ``cls``), or
    the dataclass defaults without one; a section given as a mapping is read
    over the enclosing default's section, so ``model: {min_size: 96}`` keeps
    every other value of ``Config().model`` (the demo's, not ``ModelConfig()``'s).
    Errors name ``source`` (a file or ``--set``) and the dotted key.
    """
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise PedcrowdError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    names = list(fields)
    kwargs = {}
    defaults = base if base is not None else _default_instance(cls)
    for key, value in data.items():
        if key not in names:
            raise PedcrowdError(f"{source}: unknown key '{prefix}{key}'{_suggest(str(key), names, prefix)}")
        section = getattr(defaults, key, None)
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[key]) and section is not None:
            kwargs[key] = from_dict(hints[key], value, source, prefix=f"{prefix}{key}.", base=section)
        else:
            kwargs[key] = _check(hints[key], value, source, f"{prefix}{key}")
        check_range(fields[key], kwargs[key], source, f"{prefix}{key}")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (PedcrowdError, ValueError, TypeError) as e:  # a section's own validation
        raise PedcrowdError(f"{source}: {where}: {e}") from None


def _default_instance(cls: type) -> Any:
    """``cls()``, or None when it has required fields."""
    try:
        return cls()
    except TypeError:
        return None


def _suggest(key: str, names: list[str], prefix: str = "") -> str:
    """`` (did you mean 'train.epochs'?)``: the full dotted key of the closest name."""
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    return f" (known: {', '.join(names)})"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(tp: Any, value: Any, source: str, key: str) -> Any:
    """``value`` checked (and minimally coerced) against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> PedcrowdError:
        return PedcrowdError(f"{source}: '{key}' must be {expected}, got {short_repr(value)}")

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
                return _check(arg, value, source, key)
            except PedcrowdError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise fail(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise fail("one of " + ", ".join(repr(a) for a in args))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, source, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise fail(f"a list ({_type_name(tp)})")
        if origin is list:
            return [_check(args[0] if args else Any, v, source, f"{key}[{i}]")
                    for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise fail(f"a list of {len(args)} items")
        return tuple(_check(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail("an integer")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept what float() accepts.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail("a string")
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise fail("a path")
    raise PedcrowdError(f"{source}: '{key}' has an unsupported type {tp!r} in the config schema")


# ----------------------------------------------------------------------------- overrides


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """A copy of the dataclass ``cfg`` with ``"a.b=value"`` overrides applied.

    The value is parsed as a YAML scalar (``1e-3``, ``true``, ``null``,
    ``[1, 2]``) and type-checked against the field.
    """
    for text in overrides:
        source = f"--set {text}"
        if "=" not in text:
            raise PedcrowdError(f"{source}: expected KEY=VALUE, e.g. optim.lr=0.01")
        dotted, raw = text.split("=", 1)
        dotted = dotted.strip()
        try:
            value = yaml_load(raw, source) if raw.strip() else ""
        except PedcrowdError as e:
            if "refused" in str(e):  # an alias bomb, not a plain string
                raise
            value = raw
        cfg = _set_path(cfg, dotted.split("."), value, source, prefix="")
    return cfg


def _set_path(obj: Any, parts: list[str], value: Any, source: str, prefix: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise PedcrowdError(f"{source}: '{prefix.rstrip('.')}' is not a section")
    names = [f.name for f in dataclasses.fields(obj) if f.init]
    key = parts[0]
    if key not in names:
        raise PedcrowdError(f"{source}: unknown key '{prefix}{key}'{_suggest(key, names, prefix)}")
    tp = typing.get_type_hints(type(obj))[key]
    if len(parts) == 1:
        new = _check(tp, value, source, f"{prefix}{key}")
        check_range(next(f for f in dataclasses.fields(obj) if f.name == key), new, source, f"{prefix}{key}")
    else:
        child = getattr(obj, key)
        if child is None:  # an optional section switched off: rebuild it from its defaults
            child = _check(tp, {}, source, f"{prefix}{key}")
        new = _set_path(child, parts[1:], value, source, prefix=f"{prefix}{key}.")
    try:
        return dataclasses.replace(obj, **{key: new})
    except (PedcrowdError, ValueError, TypeError) as e:  # a section's own validation
        raise PedcrowdError(f"{source}: {e}") from None


# ----------------------------------------------------------------------------- saving


def config_keys(cfg: Any = None) -> list[str]:
    """Every dotted key of the config tree (``train.epochs``, ``loss.nms.lambda_pull``, ...)."""

    def walk(data: dict[str, Any], prefix: str) -> list[str]:
        keys = []
        for k, v in data.items():
            keys += walk(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
        return keys

    return walk(config_to_dict(Config() if cfg is None else cfg), "")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain YAML-safe dict of a config (tuples become lists, paths strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Inverse of :func:`config_to_dict` (strict, like a file)."""
    cfg = from_dict(Config, data, source=source)
    check_config(cfg, source)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable by :func:`load_config`).

    Atomically: ``--resume`` reads this file, so a crash mid-write must not tear it.
    """
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
