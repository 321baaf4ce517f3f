#!/usr/bin/env python3
"""Fails on a broken relative link or anchor in the project's Markdown.

Checks every [text](target) in README.md and docs/*.md (and any other tracked *.md): a relative
target must name a file or directory that exists, and a #anchor must name a heading of the target
file (GitHub's slug: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats) or an
explicit <a id="...">. Links to http(s) and mailto are not fetched (CI has no network).

usage: check_links.py [FILE.md ...]   (default: every *.md git tracks or would track)
"""

import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def slug(heading):
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose_lines(path):
    """The file's lines outside fenced code blocks, with their numbers."""
    inside = False
    for number, line in enumerate(open(path, encoding="utf-8"), 1):
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            yield number, line


def anchors(path, cache={}):
    if path not in cache:
        found, seen = set(), {}
        for _, line in prose_lines(path):
            found.update(EXPLICIT.findall(line))
            match = HEADING.match(line)
            if match:
                base = slug(match.group(2))
                count = seen.get(base, 0)
                seen[base] = count + 1
                found.add(base if count == 0 else f"{base}-{count}")
        cache[path] = found
    return cache[path]


def check(path):
    errors = []
    for number, line in prose_lines(path):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            file_part, _, anchor = target.partition("#")
            if file_part:
                resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
            else:
                resolved = path
            where = f"{os.path.relpath(path, ROOT)}:{number}: ({target})"
            if not os.path.exists(resolved):
                errors.append(f"{where} no such file {os.path.relpath(resolved, ROOT)}")
                continue
            if anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
                errors.append(f"{where} no heading or anchor #{anchor}")
    return errors


def main():
    files = sys.argv[1:] or subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    errors, links = [], 0
    for name in files:
        path = os.path.join(ROOT, name)
        errors += check(path)
        links += sum(len(LINK.findall(line)) for _, line in prose_lines(path))
    for error in errors:
        print(error)
    print(f"check-links: {len(files)} files, {links} links, {len(errors)} broken")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
