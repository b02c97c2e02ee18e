"""Checking a ``convlab`` command line before anything runs.

fire reports an argument it cannot use only after the command has run (it might belong
to a command chained on the result: google/python-fire#168), so ``convlab train --epoch 1``
would train for the default 5 epochs and only then complain. :func:`check_command_line`
finds the command named by ``argv`` and refuses an unknown command, an unknown option or
a surplus positional argument first, reading them as fire does: ``--name value``,
``--name=value``, ``--name`` alone (True) or ``--noname`` (False), ``-n`` for the one
option starting with n, and ``-`` and ``_`` alike in names. After a bare ``--`` come
fire's own flags (``-- --help``), which are left to fire.
"""

from __future__ import annotations

import inspect
import re

FIRE_HELP_FLAGS = ("help", "h")


class CommandLineError(ValueError):
    """A command line naming a command, option or argument that does not exist."""


def is_flag(token: str) -> bool:
    """Whether fire reads ``token`` as a flag: a leading hyphen, not a negative number."""
    return token.startswith("--") or re.match(r"^-[a-zA-Z]", token) is not None


def commands_of(component) -> list[str]:
    return sorted(name.replace("_", "-") for name, _ in inspect.getmembers(component)
                  if not name.startswith("_"))


def check_command_line(root, argv, program="convlab"):
    """Raise :class:`CommandLineError` unless ``argv`` names a command of ``root`` (an
    object whose public methods and attributes are the commands and groups) with options
    and positional arguments that command takes."""
    path = [program]
    component, rest = root, list(argv)
    while rest and not inspect.isroutine(component):
        if is_flag(rest[0]) or rest[0] == "--":
            return  # options of a group: only fire's --help, left to fire
        name = rest.pop(0)
        attr = name.replace("-", "_")
        if attr.startswith("_") or not hasattr(component, attr):
            valid = ", ".join(commands_of(component))
            raise CommandLineError(f"`{' '.join(path)}` has no command {name!r}; valid commands are: {valid}")
        component = getattr(component, attr)
        path.append(name)
    if inspect.isroutine(component):
        check_arguments(component, rest, " ".join(path))


def check_arguments(command, args, usage):
    """Check ``args`` (what follows the command's name) against ``command``'s parameters."""
    parameters = inspect.signature(command).parameters
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters.values()):
        return
    names = list(parameters)
    options = ", ".join("--" + n.replace("_", "-") for n in names) or "none"
    named, positional = set(), []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            break
        if not is_flag(token):
            positional.append(token)
            continue
        key = token.lstrip("-").split("=", 1)[0].replace("-", "_")
        alone = "=" not in token and (i == len(args) or is_flag(args[i]))
        if key in FIRE_HELP_FLAGS:
            return
        if key in names or (alone and key.startswith("no") and key[2:] in names):
            name = key if key in names else key[2:]
        elif len(key) == 1 and any(n.startswith(key) for n in names):
            matches = [n for n in names if n.startswith(key)]
            if len(matches) > 1:
                raise CommandLineError(f"`{usage}` option {token.split('=', 1)[0]} is ambiguous: it could be "
                                       + " or ".join("--" + n.replace("_", "-") for n in matches))
            name = matches[0]
        else:
            raise CommandLineError(f"`{usage}` has no option {token.split('=', 1)[0]}; its options are: {options}")
        named.add(name)
        if not alone and "=" not in token:
            i += 1  # the option's value
    free = [n for n in names if n not in named]
    if len(positional) > len(free):
        surplus = " ".join(positional[len(free):])
        raise CommandLineError(f"`{usage}` got unexpected argument(s) {surplus}; its options are: {options}")
