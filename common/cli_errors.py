"""One-line command-line errors: a misspelt key names the key and the closest valid one, not 50 usage lines.

jsonargparse reports a bad key deep inside nested ``class_path`` arguments as an indented tree (``Parser key
"data"`` > ``Problem with given class_path 'common.data.DefectDataModule'`` > ``Option 'imgae_size' is not
accepted``) after the whole usage text. :func:`one_line` reads that tree back into the dotted key the user
typed (``data.init_args.imgae_size``) and suggests the closest argument of the class it belongs to (difflib).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
from collections.abc import Iterable

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser


class UsageError(Exception):
    """A bad command line, config or checkpoint. ``common.cli.main`` prints it as one line and exits with 2."""


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` for the ``defectfm`` commands outside LightningCLI (``predict --input``, ``newline``,
    ``serve``): a usage error is one line naming the command (:class:`UsageError`), not the usage text."""

    def error(self, message: str):  # noqa: ANN201 - raises
        raise UsageError(f"{self.prog}: {message}")


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word`` (difflib ratio >= 0.6), or ``None``."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def arguments_of(class_path: str) -> list[str]:
    """Constructor (or function) argument names of ``class_path``; ``[]`` when it cannot be imported.

    A function forwarding ``**kwargs`` (a preset) lists what jsonargparse resolves them to, as ``--print_config``.
    """
    module, _, name = class_path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
        target = obj.__init__ if inspect.isclass(obj) else obj
        params = list(inspect.signature(target).parameters.values())
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    names = [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not inspect.isclass(obj) and any(p.kind is p.VAR_KEYWORD for p in params):
        try:
            parser = ArgumentParser(exit_on_error=False)
            parser.add_function_arguments(obj, "fn", fail_untyped=False)
            names += [k.split(".", 1)[1] for k in parser.get_defaults().keys() if k.startswith("fn.")]
        except Exception:  # noqa: BLE001 - a hint only: the own parameters still serve
            pass
    return list(dict.fromkeys(n.split(".", 1)[0] for n in names))


_NESTED = re.compile(r"""Parser key "([^"]+)"|Problem with given class_path '([^']+)'|Option '([^']+)' is not accepted"""
                     r"""|Key "([^"]+)" is not expected""")


def _unknown_option(message: str) -> str | None:
    """``data.init_args.imgae_size: not an argument of common.data.DefectDataModule (did you mean image_size?)``
    from jsonargparse's nested error tree; ``None`` when the message is not about an unknown option."""
    path: list[str] = []
    class_path = None
    for key, cls, option, unexpected in _NESTED.findall(message):
        if key:
            path.append(key)
        elif cls:
            class_path = cls
            path.append("init_args")
        elif option or unexpected:
            bad = option or unexpected
            where = ".".join([*path, bad]) if path else bad
            owner = f" of {class_path}" if class_path else ""
            choices = arguments_of(class_path) if class_path else []
            hint = closest(bad, choices)
            tip = f" (did you mean {hint}?)" if hint else (f" (valid: {', '.join(choices)})" if choices else "")
            return f"{where}: not an argument{owner}{tip}"
    return None


def _option_strings(parser: LightningArgumentParser) -> list[str]:
    names = []
    for parser_ in [parser, *getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {}).values()]:
        for action in parser_._actions:
            names += [s for s in action.option_strings if s.startswith("--")]
    return names


def one_line(message: str, parser: LightningArgumentParser) -> str:
    """A jsonargparse error message as one line: unknown keys named with the closest valid key; any other
    message squeezed onto one line (whitespace collapsed, jsonargparse's type listing dropped)."""
    unknown = _unknown_option(message)
    if unknown:
        return unknown
    m = re.search(r"Unrecognized arguments: (.+)", message)
    if m:
        first = m.group(1).split()[0]
        flag = first.split("=", 1)[0]
        hint = closest(flag, _option_strings(parser))
        tip = f" (did you mean {hint}?)" if hint else " (see --help)"
        return f"unrecognized argument {flag}{tip}"
    return squeezed(message)


_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
          "Expected a <class 'NoneType'>", "- Expected a <class 'NoneType'>")


def squeezed(message: str) -> str:
    """``key.path: what is wrong`` from jsonargparse's nested error tree: the keys of the ``Parser key`` lines
    joined (``init_args`` where a class sits between them) and the innermost message."""
    keys: list[str] = []
    detail = ""
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        m = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        if m:
            keys.append(m.group(1))
            line = m.group(2)
        elif line.startswith("Problem with given class_path"):
            keys.append("init_args")
            continue
        if line and not line.startswith(_NOISE):
            detail = line
    while keys and keys[-1] == "init_args":
        keys.pop()
    path = ".".join(k for i, k in enumerate(keys) if k != "init_args" or (i + 1 < len(keys) and keys[i + 1] != "init_args"))
    detail = re.sub(r"<class '([\w.]+)'>", r"\1", detail) or " ".join(message.split())
    return f"{path}: {detail}" if path else detail


class DefectArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors raise :class:`UsageError` with one line instead of printing the
    usage text and exiting (when ``exit_on_error``; jsonargparse's own inner parsers are left alone)."""

    def error(self, message: str, ex: Exception | None = None):  # noqa: ANN201 - NoReturn in the base
        if not self.exit_on_error:
            return super().error(message, ex)
        self._logger.error(message)
        raise UsageError(one_line(message, self)) from ex
