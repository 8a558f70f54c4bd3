"""Which packages each command needs, checked before it does any work.

`pip install diffspace` brings torch, numpy, pillow, safetensors and tqdm: everything training, generation and
dataset conversion need. The extras add the rest:

    pip install 'diffspace[plot]'   matplotlib: `converge`'s plot, scatter previews of 2-D runs
    pip install 'diffspace[eval]'   scikit-learn (the built-in `digits` dataset) and scipy
    pip install 'diffspace[all]'    both

A command that lacks a package refuses at once, in one line naming the package and the install command, instead
of failing after an hour of work (e.g. at the first checkpoint save).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from diffspace.errors import ConfigError

__all__ = ["EXTRA", "PACKAGE", "check_command", "command_needs", "install_hint", "missing", "require"]

# import name -> (pip package, extra that brings it; None = a required dependency of diffspace)
PACKAGE = {
    "safetensors": ("safetensors", None),
    "tqdm": ("tqdm", None),
    "PIL": ("pillow", None),
    "matplotlib": ("matplotlib", "plot"),
    "sklearn": ("scikit-learn", "eval"),
    "scipy": ("scipy", "eval"),
}
EXTRA = {name: extra for name, (_, extra) in PACKAGE.items()}
_CORE = ("safetensors", "tqdm", "PIL")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses the package
        return False


def missing(modules: Iterable[str]) -> list[str]:
    """The import names among `modules` that cannot be imported here."""
    return [m for m in dict.fromkeys(modules) if not _installed(m)]


def install_hint(module: str) -> str:
    package, extra = PACKAGE.get(module, (module, None))
    return f"pip install 'diffspace[{extra}]'" if extra else f"pip install {package} (a dependency of diffspace)"


def require(modules: Iterable[str], what: str, alternative: str = "") -> None:
    """ConfigError when a module of `modules` is missing: '<package> is not installed and <what> needs it:
    <pip command>[, or <alternative>]'."""
    absent = missing(modules)
    if absent:
        m = absent[0]
        package = PACKAGE.get(m, (m, None))[0]
        more = f" (nor {', '.join(PACKAGE.get(a, (a, None))[0] for a in absent[1:])})" if absent[1:] else ""
        raise ConfigError(f"{package}{more} is not installed and {what} needs it: {install_hint(m)}"
                          + (f", or {alternative}" if alternative else ""))


def _data_needs(spec) -> list[str]:
    """Packages a dataset spec needs beyond the core ones."""
    name = str(spec or "").split(":")[0]
    return ["sklearn"] if name == "digits" else []


def command_needs(command: str, args) -> list[tuple[list[str], str, str]]:
    """[(modules, what, alternative)] a parsed command line needs: checked by the CLI before the command runs."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    needs = [(list(_CORE), "this command", "")]
    for option in ("data", "source", "test"):
        value = get(option)
        if isinstance(value, str) and _data_needs(value):
            needs.append((_data_needs(value), f"--{option} {value}", ""))
    if command == "converge" and not get("no_plot", True):
        needs.append((["matplotlib"], "the plot", "pass --no-plot"))
    return needs


def check_command(command: str, args) -> None:
    """Refuse (ConfigError) a command whose packages are not all installed, before it starts."""
    for modules, what, alternative in command_needs(command, args):
        require(modules, what, alternative)
