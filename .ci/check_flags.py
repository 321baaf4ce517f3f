#!/usr/bin/env python3
"""Checks that the configuration table of docs/operations.md lists exactly the flags of --help.

Runs `BINARY --help`, and `BINARY COMMAND --help` for each subcommand it lists (migrate, verify),
and reads every long flag, its `[env: NAME]` (or `[env: NAME=value]`) and its `[default: ...]`.
clap's own `--help` and `--version` are left out. Then reads the first table of docs/operations.md
whose header is `| flag | environment | default | meaning |` and fails (exit 1), naming each
item, when:
  - a flag or an environment variable of --help is not in the table, or the table lists one that
    --help does not have;
  - a row pairs a flag with another flag's variable;
  - a row's default differs from --help's (`off`, or `false` for a switch, where --help has none);
  - a flag has two rows, or a row has none.

usage: check_flags.py BINARY [DOCUMENT]     (DOCUMENT defaults to docs/operations.md)
Standard library only.
"""

import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BUILT_IN = {"--help", "--version"}
TABLE_HEADER = re.compile(r"^\|\s*flag\s*\|\s*environment\s*\|\s*default\s*\|\s*meaning\s*\|\s*$")
# clap indents an option's first line by 2 (`-h, --help`) or 6 (`--listen`) spaces and its
# description by 10, so a description that mentions --tls-key is not taken for an option.
OPTION = re.compile(r"^  (?:-[A-Za-z], |    )(--[a-z0-9][a-z0-9-]*)")
ENV = re.compile(r"\[env: ([A-Za-z_][A-Za-z0-9_]*)(?:=[^\]]*)?\]")
DEFAULT = re.compile(r"\[default: ([^\]]*)\]")
NO_DEFAULT = {"off", "`false`"}


def run_help(binary, *command):
    try:
        result = subprocess.run([binary, *command, "--help"], capture_output=True, text=True,
                                env={**os.environ, "NO_COLOR": "1"})
    except OSError as err:
        sys.exit(f"check-flags: cannot run {binary}: {err}")
    if result.returncode != 0:
        sys.exit(f"check-flags: `{' '.join([binary, *command, '--help'])}` exited "
                 f"{result.returncode}:\n{result.stderr}")
    return result.stdout


def subcommands(text):
    """The names under `Commands:`, clap's own `help` left out."""
    names, inside = [], False
    for line in text.splitlines():
        if line.strip() == "Commands:":
            inside = True
        elif inside and not line.strip():
            break
        elif inside:
            name = line.split()[0]
            if name != "help":
                names.append(name)
    return names


def options(text):
    """{flag: (env or None, default or None)} of one --help text."""
    found, flag, description = {}, None, []

    def close():
        if flag is not None:
            joined = " ".join(description)
            env, default = ENV.search(joined), DEFAULT.search(joined)
            found[flag] = (env and env.group(1), default and default.group(1))

    for line in text.splitlines():
        match = OPTION.match(line)
        if match:
            close()
            flag, description = match.group(1), [line[match.end():]]
        elif flag is not None and line.startswith(" " * 10):
            description.append(line.strip())
        elif flag is not None and line.strip():
            close()
            flag, description = None, []
    close()
    return found


def from_help(binary):
    """{flag: (env, default)} over the binary and its subcommands, and where each was seen."""
    main = run_help(binary)
    flags, seen_in = {}, {}
    for command in [[]] + [[name] for name in subcommands(main)]:
        text = main if not command else run_help(binary, *command)
        where = " ".join(["student-service", *command, "--help"])
        for flag, value in options(text).items():
            if flag in BUILT_IN:
                continue
            if flag in flags and flags[flag] != value:
                sys.exit(f"check-flags: {flag} differs between {seen_in[flag]} and {where}")
            flags[flag] = value
            seen_in.setdefault(flag, where)
    return flags


def code_spans(cell):
    return re.findall(r"`([^`]*)`", cell)


def from_table(path):
    """[(line number, flag, env, default cell)] of the configuration table."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if TABLE_HEADER.match(line)), None)
    if start is None:
        sys.exit(f"check-flags: no `| flag | environment | default | meaning |` table in {path}")
    rows = []
    for number, line in enumerate(lines[start + 2:], start=start + 3):
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        flag_cell, env_cell, default_cell = (cells + ["", "", ""])[:3]
        flags = [span for span in code_spans(flag_cell) if span.startswith("--")]
        envs = code_spans(env_cell)
        rows.append((number, flags[0] if len(flags) == 1 else flag_cell,
                     envs[0] if len(envs) == 1 else env_cell, default_cell))
    return rows


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: check_flags.py BINARY [DOCUMENT]")
    binary = sys.argv[1]
    document = sys.argv[2] if len(sys.argv) == 3 else os.path.join(ROOT, "docs", "operations.md")
    name = os.path.relpath(document, ROOT) if len(sys.argv) == 2 else document
    help_flags = from_help(binary)
    rows = from_table(document)
    problems = []

    table_flags = {}
    for number, flag, env, default in rows:
        if not flag:
            problems.append(f"{name}:{number}: a row with no flag ({env or 'and no variable'}): "
                            f"variables without a flag go in a table of their own")
            continue
        if flag in table_flags:
            problems.append(f"{name}:{number}: {flag} has a second row (first at line {table_flags[flag][0]})")
            continue
        table_flags[flag] = (number, env, default)

    help_envs = {env for env, _ in help_flags.values() if env}
    table_envs = {env for _, env, _ in table_flags.values() if env}
    for flag in sorted(set(help_flags) - set(table_flags)):
        problems.append(f"missing from {name}: flag {flag} (--help has it)")
    for flag in sorted(set(table_flags) - set(help_flags)):
        problems.append(f"{name}:{table_flags[flag][0]}: flag {flag} is not in --help")
    for env in sorted(help_envs - table_envs):
        problems.append(f"missing from {name}: environment variable {env} (--help has it)")
    for env in sorted(table_envs - help_envs):
        problems.append(f"{name}: environment variable {env} is not in --help")

    for flag in sorted(set(help_flags) & set(table_flags)):
        env, default = help_flags[flag]
        number, table_env, table_default = table_flags[flag]
        if env != (table_env or None):
            problems.append(f"{name}:{number}: {flag} is paired with {table_env or 'no variable'}; "
                            f"--help says {env or 'none'}")
        expected = f"`{default}`" if default is not None else None
        if expected is not None and table_default != expected:
            problems.append(f"{name}:{number}: the default of {flag} is {table_default or 'empty'}; "
                            f"--help says {expected}")
        if expected is None and table_default not in NO_DEFAULT:
            problems.append(f"{name}:{number}: {flag} has no default in --help; the table says "
                            f"{table_default or 'nothing'} (write off, or `false` for a switch)")

    if problems:
        for problem in problems:
            print(f"check-flags: {problem}")
        print(f"check-flags: {len(problems)} problem(s): make the table of {name} and --help agree")
        return 1
    print(f"check-flags: the {len(help_flags)} flags and {len(help_envs)} environment variables of "
          f"--help (and its subcommands') are the rows of {name}, with their defaults")
    return 0


if __name__ == "__main__":
    sys.exit(main())
