"""Checking a ``convlab`` command line before anything runs.

fire reports an argument it cannot use only after the command has run (it might belong
to a command chained on the result: google/python-fire#168), so ``convlab train --epoch 1``
would train for the default 5 epochs and only then complain. :func:`check_command_line`
finds the command named by ``argv`` and refuses an unknown command, an unknown option or
a surplus positional argument first, reading them as fire does: ``--name value``,
``--name=value``, ``--name`` alone (True) or ``--noname`` (False), ``-n`` for the one
option starting with n, and ``-`` and ``_`` alike in names; a number after an option's
name is its value, a negative one too (``--deadline -inf``: :func:`is_value`, and fire is
handed ``--deadline=-inf``, :func:`joined_values`). A bare ``--`` is refused:
fire reads what follows it as its own flags (``--interactive``, ``--trace``, ...), so
``convlab train -- --epochs 2`` trained for 5 epochs, then printed fire's page on the
result. ``--help`` (or ``-h``) after a command or group, or ``help`` before it (``convlab
help train``, as git and pip take it), prints :func:`help_text`: the options as they are
typed (``--batch-size``).

fire also turns every value that looks like a Python literal into one: ``--metrics-out 1e3``
would be the float 1000.0, ``--progress no`` the (true) string ``"no"`` and ``--kernel-sizes 3,``
the tuple ``(3,)``, its empty item gone. :func:`typed` declares, per command, which options
are paths, names or comma-separated lists (taken as the raw string typed) and which are
yes/no flags (:func:`parse_flag`).
"""

from __future__ import annotations

import contextlib
import inspect
import re
import shlex

import fire.decorators
import numpy as np

FIRE_HELP_FLAGS = ("help", "h")
TRUE_WORDS = ("yes", "true", "on", "1")
FALSE_WORDS = ("no", "false", "off", "0")


class CommandLineError(ValueError):
    """A command line naming a command, option or argument that does not exist."""


def parse_flag(option: str):
    """A fire parse function for the yes/no option ``option``: yes/true/on/1 or
    no/false/off/0 in any case (``--progress`` alone is true, ``--noprogress`` false)."""

    def parse(text):
        word = str(text).strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise CommandLineError(f"--{option.replace('_', '-')} takes yes or no (also true/false, on/off, 1/0), "
                               f"got {text!r}")

    parse.yes_no = True  # for help_text, whatever the option's default
    return parse


def typed(positional=(), text=(), flags=()):
    """Decorator of a command: its ``positional`` parameters (in order) and the options in
    ``text`` (paths, names, URLs, lists) receive the string as typed; the options in ``flags``
    are yes/no (:func:`parse_flag`). Other values are read by fire (numbers)."""
    named = {name: str for name in (*positional, *text)}
    named.update({name: parse_flag(name) for name in flags})
    return fire.decorators.SetParseFns(*(str for _ in positional), **named)


def check_fits_dtype(option: str, value: float, dtype) -> float:
    """``value`` if it is the same kind of number in ``dtype`` (the model's float type, where
    it is used): not overflowing to inf, not rounding to 0."""
    info = np.finfo(dtype)
    with np.errstate(over="ignore"):
        stored = np.asarray(value).astype(dtype)
    if not np.isfinite(stored) or (value != 0 and stored == 0):
        what = "overflows to inf" if not np.isfinite(stored) else "rounds to 0"
        raise CommandLineError(f"{option} {value!r} {what} in the model's {info.dtype} arithmetic; "
                               f"use a value between {info.smallest_subnormal:.3g} and {info.max:.3g} "
                               f"(magnitude)")
    return value


@contextlib.contextmanager
def out_of_memory_names(sizes: dict):
    """Within the block, running out of memory is a :class:`CommandLineError` naming the options
    in ``sizes`` (name: value) that set how big the arrays are, what numpy needed, and the
    process limit (``ulimit -v``) it ran into, if one is set."""
    try:
        yield
    except MemoryError as e:
        from convlab.headroom import limits_note

        options = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in sizes.items())
        raise CommandLineError(f"out of memory with {options}: {e or 'an allocation failed'}; "
                               f"try smaller values{limits_note()}") from None


def is_flag(token: str) -> bool:
    """Whether fire reads ``token`` as a flag: a leading hyphen, not a negative number of
    digits (fire reads -inf and -nan as flags: see :func:`is_value`)."""
    return token.startswith("--") or re.match(r"^-[a-zA-Z]", token) is not None


def is_value(token: str) -> bool:
    """Whether ``token``, after an option's name, is that option's value: not a flag, or
    a number (what float() reads: -1, -0.5, -1e3, -inf, -nan). A negative number is then
    refused by the option's own check, with its message, not taken for an option of that
    name (``--deadline -inf`` was "option --deadline needs a value")."""
    if not is_flag(token):
        return True
    try:
        float(token)
    except ValueError:
        return False
    return True


def joined_values(argv) -> list[str]:
    """``argv`` as fire is to read it: an option's value that fire would take for a flag
    (-inf, -nan: :func:`is_value`) joined to its option with ``=`` (``--deadline=-inf``)."""
    joined = []
    for token in argv:
        if joined and is_flag(token) and is_value(token) and is_flag(joined[-1]) and "=" not in joined[-1]:
            joined[-1] += "=" + token
        else:
            joined.append(token)
    return joined


def commands_of(component) -> list[str]:
    return sorted(name.replace("_", "-") for name, _ in inspect.getmembers(component)
                  if not name.startswith("_"))


def check_command_line(root, argv, program="convlab"):
    """Raise :class:`CommandLineError` unless ``argv`` names a command of ``root`` (an
    object whose public methods and attributes are the commands and groups) with options
    and positional arguments that command takes. Returns the help text to print instead
    of running anything when ``argv`` asks for it (``--help``/``-h``) or names a group
    without one of its commands (fire would open its own help in a pager), else None."""
    path = [program]
    component, rest = root, list(argv)
    help_asked = False
    while not inspect.isroutine(component):
        if rest[:1] == ["help"] and not help_asked:  # `convlab help train`: train's --help
            help_asked = True
            rest.pop(0)
            continue
        if not rest or (is_flag(rest[0]) and rest[0].lstrip("-") in FIRE_HELP_FLAGS):
            return help_text(component, " ".join(path))
        if rest[0] == "--":
            refuse_bare_dashes(" ".join(path), rest[1:], "a command", f"one of: {', '.join(commands_of(component))}")
        if is_flag(rest[0]):
            raise CommandLineError(f"`{' '.join(path)}` takes no option {rest[0].split('=', 1)[0]} here; give a "
                                   f"command first (one of: {', '.join(commands_of(component))}), then its options")
        name = rest.pop(0)
        attr = name.replace("-", "_")
        if attr.startswith("_") or not hasattr(component, attr):
            valid = ", ".join(commands_of(component))
            raise CommandLineError(f"`{' '.join(path)}` has no command {name!r}; valid commands are: {valid}")
        component = getattr(component, attr)
        path.append(name)
    if help_asked and rest:
        raise CommandLineError(f"`{program} help` takes a command's name only (such as `{' '.join(path)} --help` "
                               f"or `{program} help {' '.join(path[1:])}`), got {' '.join(rest)} after it")
    if help_asked or check_arguments(component, rest, " ".join(path)):
        return help_text(component, " ".join(path))
    return None


def refuse_bare_dashes(usage, args, allowed, which):
    """Raise :class:`CommandLineError` for a bare ``--`` among ``usage``'s arguments, ``args``
    being them without it: fire would read what follows it as its own flags (see the module
    doc). The refusal shows the command line without it."""
    instead = f", as in `{usage} {shlex.join(args)}`" if args else ""
    raise CommandLineError(f"`{usage}` takes no bare --; give {allowed} without it{instead} ({which})")


def check_arguments(command, args, usage) -> bool:
    """Check ``args`` (what follows the command's name) against ``command``'s parameters;
    True when they ask for help. Only parameters before a ``*`` may be given by position."""
    parameters = inspect.signature(command).parameters
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters.values()):
        return False
    names = list(parameters)
    # As --help lists them: a positional parameter (predict's FILE) is named as such, not
    # offered as an option (fire takes --file too, but --help shows FILE).
    arguments = [n.upper() for n, p in parameters.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    options = ", ".join(option_name(n) for n, p in parameters.items() if p.kind != p.POSITIONAL_OR_KEYWORD) or "none"
    named, positional = set(), []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if token == "--":
            refuse_bare_dashes(usage, args[:i - 1] + args[i:], "its options", f"`{usage} --help` lists them")
        if not is_flag(token):
            positional.append(token)
            continue
        key = token.lstrip("-").split("=", 1)[0].replace("-", "_")
        alone = "=" not in token and (i == len(args) or not is_value(args[i]))
        if key in FIRE_HELP_FLAGS:
            return True
        if key in names or (alone and key.startswith("no") and key[2:] in names):
            name = key if key in names else key[2:]
        elif len(key) == 1 and any(n.startswith(key) for n in names):
            matches = [n for n in names if n.startswith(key)]
            if len(matches) > 1:
                raise CommandLineError(f"`{usage}` option {token.split('=', 1)[0]} is ambiguous: it could be "
                                       + " or ".join(option_name(n) for n in matches))
            name = matches[0]
        else:
            raise CommandLineError(f"`{usage}` has no option {token.split('=', 1)[0]}; its options are: {options}"
                                   + (f" (and the argument{'s' * (len(arguments) > 1)} {' '.join(arguments)}, "
                                      "given by position)" if arguments else ""))
        # fire reads any option alone as True: only a yes/no option may be given so (`--epochs`
        # alone was "--epochs must be a positive whole number, got True").
        parse = fire.decorators.GetParseFns(command)["named"].get(name)
        if alone and not (getattr(parse, "yes_no", False) or isinstance(parameters[name].default, bool)):
            raise CommandLineError(f"`{usage}` option {option_name(name)} needs a value "
                                   f"({option_name(name)} {name.split('_')[-1].upper()})")
        if name in named:
            raise CommandLineError(f"`{usage}` option {option_name(name)} is given twice; give it once")
        named.add(name)
        value = None if alone else token.split("=", 1)[1] if "=" in token else args[i]
        if value is not None and value.strip() == "None" and parse is None:
            # fire reads it as Python's None, the value of an option not given: `--epochs None`
            # (a script's f"--epochs {n}" with n None) trained for the default 5 epochs.
            raise CommandLineError(f"`{usage}` option {option_name(name)} needs a value, got None (leave the "
                                   "option out for its default)")
        if not alone and "=" not in token:
            i += 1  # the option's value
    free = [n for n, p in parameters.items() if p.kind == p.POSITIONAL_OR_KEYWORD and n not in named]
    if len(positional) > len(free):
        surplus = " ".join(positional[len(free):])
        takes = (f"takes {len(free)} positional argument(s) ({', '.join(n.upper() for n in free)})" if free
                 else "takes no positional arguments")
        raise CommandLineError(f"`{usage}` got unexpected argument(s) {surplus}: it {takes}; "
                               f"other values follow their option's name (its options are: {options})")
    return False


def option_name(parameter: str) -> str:
    """A parameter as it is typed on the command line: batch_size -> --batch-size."""
    return "--" + parameter.replace("_", "-")


def docstring_parts(obj) -> tuple[str, dict[str, str]]:
    """(the docstring before its ``Args:`` section, {parameter: its description})."""
    doc = inspect.cleandoc(inspect.getdoc(obj) or "")
    text, _, args = doc.partition("\nArgs:\n")
    described, name = {}, None
    for line in args.splitlines():
        match = re.match(r"^\s{2,}(\w+):\s*(.*)$", line)
        if match and len(line) - len(line.lstrip()) <= 4:
            name, line = match.group(1), match.group(2)
            described[name] = line
        elif name is not None:
            described[name] += " " + line.strip()
    return text.strip(), described


def help_text(component, usage: str) -> str:
    """What ``--help`` prints for a command or a group: its docstring, then its options
    (as typed, with their defaults) or its commands."""
    if inspect.isroutine(component):
        text, described = docstring_parts(component)
        parameters = inspect.signature(component).parameters
        parse_fns = (fire.decorators.GetParseFns(component) or {}).get("named", {})
        positional = [n for n, p in parameters.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
        lines = [" ".join(["usage:", usage, *(n.upper() for n in positional), "[options]"]), "", text, ""]
        if positional:
            lines.append("arguments:")
            lines += [f"  {n.upper():<27} {described.get(n, '')}" for n in positional]
            lines.append("")
        lines.append("options:")
        for name, parameter in parameters.items():
            default = parameter.default
            if isinstance(default, bool) or getattr(parse_fns.get(name), "yes_no", False):
                typed_as = f"{option_name(name)} yes|no"
            else:
                typed_as = f"{option_name(name)} {name.split('_')[-1].upper()}"
            # Every yes/no option shows its default, off as well as on (one whose default is
            # None, decided by the command, says it in its description).
            note = (f" (default: {'yes' if default else 'no'})" if isinstance(default, bool)
                    else "" if default in (None, inspect.Parameter.empty) else f" (default: {default})")
            if name not in positional:
                lines.append(f"  {typed_as:<27} {described.get(name, '')}{note}")
        lines.append(f"  {'--help':<27} show this help and exit")
        return "\n".join(lines)
    commands = commands_of(component)
    width = max(map(len, commands), default=0) + 2
    lines = [f"usage: {usage} COMMAND [options]", "", (inspect.getdoc(component) or "").strip(), "", "commands:"]
    for name in commands:
        summary = (inspect.getdoc(getattr(component, name.replace("-", "_"))) or "").split("\n")[0]
        lines.append(f"  {name:<{width}}{summary}")
    program, *group = usage.split()
    lines.append(f"\n`{usage} COMMAND --help` (or `{' '.join([program, 'help', *group])} COMMAND`) describes a "
                 "command's options.")
    return "\n".join(lines)
