"""Sampler options checked at the API boundary: type (from the function's annotations and defaults) and range.

Every option a sampler takes is a keyword-only parameter with a default. `validate` checks a dict of options
against them: booleans must be real booleans, integers real integers, floats real numbers that are not NaN
(and finite unless the default is infinite, as for S_tmax), strings strings; a few well-known names also have
a range (S_churn >= 0, alpha in (0, 1], …). `parse` turns command-line `key=value` strings into such a dict
with the same types (booleans from true/false/1/0). Errors are one line naming the option and the fix.
"""

from __future__ import annotations

import inspect
import math
import numbers
import typing
from collections.abc import Callable, Iterable, Sequence

import torch

from diffspace.errors import ConfigError

# name -> (low, high, low inclusive, high inclusive); shared by every sampler that uses the name.
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "S_churn": (0.0, math.inf, True, True),
    "S_noise": (0.0, math.inf, True, False),
    "S_tmin": (0.0, math.inf, True, False),
    "S_tmax": (0.0, math.inf, True, True),
    "S_min": (0.0, math.inf, True, False),
    "S_max": (0.0, math.inf, True, True),
    "eta": (0.0, math.inf, True, False),
    "s_noise": (0.0, math.inf, True, False),
    "alpha": (0.0, 1.0, False, True),
    "r": (0.0, 1.0, False, True),
    "num_steps": (1, math.inf, True, False),
    "sigma_min": (0.0, math.inf, False, False),
    "sigma_max": (0.0, math.inf, False, False),
    "rho": (0.0, math.inf, False, False),
    "epsilon_s": (0.0, 1.0, False, False),
    "C_1": (0.0, math.inf, False, False),
    "C_2": (0.0, math.inf, False, False),
    "M": (2, math.inf, True, False),
}
ALLOW_INF = {"S_churn"}  # γ is capped at √2 − 1, so an infinite churn is meaningful
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def _kinds(fn: Callable) -> dict[str, tuple[set, bool, object]]:
    """option -> (allowed base types among {bool, int, float, str}, None allowed, default)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: fall back on the defaults
        hints = {}
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        hint = hints.get(name)
        args = typing.get_args(hint) if hint is not None and typing.get_args(hint) else (hint,)
        kinds = {a for a in args if a in (bool, int, float, str)}
        if kinds and any(typing.get_origin(a) in (list, tuple, Sequence, Iterable) for a in args):
            kinds.add(list)  # also one value per step (e.g. AMED's r and c): each element is checked
        optional = type(None) in args or p.default is None
        if not kinds and p.default is not None and type(p.default) in (bool, int, float, str):
            kinds = {type(p.default)}
        if kinds:
            out[name] = (kinds, optional, p.default)
    return out


def _number(value):
    """A real number as a Python int/float (0-d tensors and numpy scalars included), else None."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _check_one(sampler: str, name: str, value, kinds: set, optional: bool, default):
    where = f"sampler {sampler!r} option {name}={value!r}"
    if list in kinds and (isinstance(value, (list, tuple)) or (isinstance(value, torch.Tensor) and value.ndim > 0)):
        return [_check_one(sampler, name, v, kinds - {list}, False, default) for v in value]
    kinds = kinds - {list}
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required (default {default!r})")
    if bool in kinds:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            return bool(value)
        raise ConfigError(f"{where} must be True or False (on the command line: true/false/1/0)")
    if str in kinds:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string")
    number = _number(value)
    if number is None:
        kind = "an integer" if kinds == {int} else "a number"
        raise ConfigError(f"{where} must be {kind}, got {type(value).__name__}")
    if kinds == {int}:
        if not isinstance(number, int):
            raise ConfigError(f"{where} must be an integer")
    else:
        number = float(number)
        if math.isnan(number):
            raise ConfigError(f"{where} is NaN: give a number")
        if math.isinf(number) and not (name in ALLOW_INF or (isinstance(default, float) and math.isinf(default))):
            raise ConfigError(f"{where} must be finite")
    if name in RANGES:
        lo, hi, lo_in, hi_in = RANGES[name]
        ok = (number >= lo if lo_in else number > lo) and (number <= hi if hi_in else number < hi)
        if not ok:
            left, right = "[" if lo_in else "(", "]" if hi_in else ")"
            raise ConfigError(f"{where} must lie in {left}{lo:g}, {hi:g}{right}")
    return number


def validate(sampler: str, fn: Callable, options: dict) -> dict:
    """The options with checked types (numbers as int/float); ConfigError naming the first bad one."""
    kinds = _kinds(fn)
    out = dict(options)
    for name, value in options.items():
        if name in kinds:
            out[name] = _check_one(sampler, name, value, *kinds[name])
    dtype = options.get("dtype")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigError(f"sampler {sampler!r} option dtype={dtype!r} must be a floating torch dtype, "
                          "e.g. torch.float64 or torch.float32")
    return out


def parse(sampler: str, fn: Callable, items: Iterable[str], known: Iterable[str]) -> dict:
    """['S_churn=40', 'afs=true'] -> {'S_churn': 40.0, 'afs': True} with the types of fn's options."""
    kinds, known = _kinds(fn), list(known)
    out: dict = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ConfigError(f"--opt {item!r} is not key=value: use e.g. --opt S_churn=40")
        if key not in known:
            raise ConfigError(f"sampler {sampler!r} does not take option {key}; it takes: {', '.join(known) or 'none'}")
        out[key] = _parse_value(sampler, key, text, *kinds.get(key, ({str}, False, None)))
    return validate(sampler, fn, out)


def _parse_value(sampler: str, key: str, text: str, kinds: set, optional: bool, default):
    if list in kinds and "," in text:
        return [_parse_value(sampler, key, t.strip(), kinds - {list}, False, default) for t in text.split(",")]
    kinds = kinds - {list}
    lower = text.lower()
    if optional and lower in ("none", "null"):
        return None
    if bool in kinds:
        if lower in _TRUE or lower in _FALSE:
            return lower in _TRUE
        raise ConfigError(f"sampler {sampler!r} option {key}={text!r} must be true or false (or 1/0)")
    if str in kinds:
        return text
    try:
        return int(text) if kinds == {int} else float(text)
    except ValueError:
        kind = "an integer" if kinds == {int} else "a number"
        raise ConfigError(f"sampler {sampler!r} option {key}={text!r} must be {kind}") from None
