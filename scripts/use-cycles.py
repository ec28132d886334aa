#!/usr/bin/env python3
"""Finds `use` cycles between the files of a Rust crate.

Usage: python3 scripts/use-cycles.py [--graph] SRC_DIR [SRC_DIR ...]

For each crate source directory (holding lib.rs or main.rs) this builds the graph file -> file of
what each file's code refers to inside the crate, prints every cycle, and exits 1 if there is one
(2 on bad arguments). `--graph` also prints every edge, with the line that makes it.

What counts as a reference:

- every path of a `use` declaration (`pub use` and `pub(crate) use` included) that starts with
  `crate`, `super`, `self` or the name of a module declared in the same file;
- every path written in code that starts with `crate::`, `super::` or `self::`, or with
  `name::` where `name` is a module declared in the same file;
- `$crate::` paths inside `macro_rules!` bodies (resolved from the crate root). Everything else in
  a macro body is left out: it is resolved where the macro is expanded, not where it is written.

Paths are resolved through the module tree (`mod x;` finds `x.rs` or `x/mod.rs`, a `#[path]` on a
file's top-level `mod x;` is honoured, inline `mod x { .. }` blocks belong to their file) and through imports, so a name that
lib.rs re-exports (`pub use foo::Foo`, then `use crate::Foo` elsewhere) counts as a reference to
the file that defines it, not to lib.rs; glob imports are followed too. Declaring a module
(`mod x;`) is ownership, not use, and makes no edge. Paths into other crates make no edge.

Left out: comments (doc comments included, so intra-doc links are not dependencies) and string
literals; every item marked exactly `#[cfg(test)]` (a `mod tests { .. }` body, a test-only
`use`, a `#[cfg(test)] mod x;` file, which is then not read at all). Test code may reach back
into what it tests without making a cycle of the library.

Python 3.9 or later, standard library only.
"""

import os
import re
import sys

IDENT = r"(?:r#)?[A-Za-z_][A-Za-z0-9_]*"


def strip(src):
    """`src` with comments and the contents of string and char literals blanked out (newlines
    kept, so offsets and line numbers stay those of the file)."""
    out = list(src)
    n = len(src)
    i = 0

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif c == "r" and re.match(r'r#*"', src[i:]) and (i == 0 or not re.match(r"[A-Za-z0-9_]", src[i - 1]) or src[i - 1] == "b"):
            m = re.match(r'r(#*)"', src[i:])
            end = src.find('"' + m.group(1), i + len(m.group(0)))
            end = n if end < 0 else end + 1 + len(m.group(1))
            blank(i + len(m.group(0)), end - 1 - len(m.group(1)))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            blank(i + 1, j)
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}'), or else a lifetime or label, left as it is.
            m = re.match(r"'(\\(?:u\{[0-9A-Fa-f]*\}|x[0-9A-Fa-f]{2}|.)|[^\\'\n])'", src[i:])
            if m:
                blank(i + 1, i + len(m.group(0)) - 1)
                i += len(m.group(0))
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def matching(code, open_at):
    """The offset just past the brace that closes the one at `open_at`."""
    depth = 0
    for k in range(open_at, len(code)):
        if code[k] == "{":
            depth += 1
        elif code[k] == "}":
            depth -= 1
            if depth == 0:
                return k + 1
    return len(code)


def item_end(code, at):
    """The end of the item starting at `at`: its `;`, or its brace-matched body."""
    depth = 0
    for k in range(at, len(code)):
        ch = code[k]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == ";" and depth == 0:
            return k + 1
        elif ch == "{" and depth == 0:
            return matching(code, k)
    return len(code)


ATTR = re.compile(r"#\s*\[")


def skip_attrs(code, at):
    """`at` moved past whitespace and outer attributes."""
    while True:
        m = re.compile(r"\s*").match(code, at)
        at = m.end()
        m = ATTR.match(code, at)
        if not m:
            return at
        depth, k = 0, m.end() - 1
        while k < len(code):
            if code[k] == "[":
                depth += 1
            elif code[k] == "]":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        at = k + 1


def cut_test_items(code):
    """Blanks every item marked `#[cfg(test)]`; returns the code and the names of the file
    modules so dropped (`#[cfg(test)] mod x;`)."""
    dropped = set()
    out = list(code)
    for m in re.finditer(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]", code):
        if out[m.start()] == " ":
            continue  # inside an item already cut
        start = skip_attrs(code, m.end())
        end = item_end(code, start)
        d = re.match(r"(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", code[start:end])
        if d:
            dropped.add(d.group(1).removeprefix("r#"))
        for k in range(m.start(), end):
            if out[k] != "\n":
                out[k] = " "
    return "".join(out), dropped


def cut_macros(code):
    """Blanks `macro_rules!` bodies; returns the code, the `$crate::` paths found in them (as
    (offset, segments, is a macro call)) and the names of the macros defined."""
    out = list(code)
    paths = []
    names = set()
    for m in re.finditer(r"\bmacro_rules\s*!\s*(" + IDENT + r")\s*([{(\[])", code):
        names.add(m.group(1).removeprefix("r#"))
        open_at = m.end() - 1
        if code[open_at] == "{":
            end = matching(code, open_at)
        else:
            end = item_end(code, open_at)
        body = code[open_at:end]
        for p in re.finditer(r"\$crate((?:\s*::\s*" + IDENT + r")+)(\s*!)?", body):
            segs = ["crate"] + re.findall(IDENT, p.group(1))
            paths.append((open_at + p.start(), segs, bool(p.group(2))))
        for k in range(m.start(), end):
            if out[k] != "\n":
                out[k] = " "
    return "".join(out), paths, names


def use_tree(text):
    """Expands a use tree (`a::{b, c::{self, D as E}, *}`) into (segments, alias) pairs; a glob
    has alias `*`."""
    tokens = re.findall(r"::|\{|\}|,|\*|" + IDENT, text)
    pos = 0

    def tree(prefix):
        nonlocal pos
        results = []
        segs = list(prefix)
        while pos < len(tokens):
            t = tokens[pos]
            if t == "::":
                pos += 1
            elif t == "{":
                pos += 1
                while pos < len(tokens) and tokens[pos] != "}":
                    if tokens[pos] == ",":
                        pos += 1
                        continue
                    results += tree(segs)
                pos += 1
                return results
            elif t == "*":
                pos += 1
                results.append((segs, "*"))
                return results
            elif t in (",", "}"):
                break
            elif t == "as":
                pos += 1
                alias = tokens[pos] if pos < len(tokens) else "_"
                pos += 1
                if segs and segs[-1] == "self":
                    segs = segs[:-1]
                results.append((segs, alias.removeprefix("r#")))
                return results
            else:
                segs = segs + [t.removeprefix("r#")]
                pos += 1
        if segs and segs != list(prefix):
            last = segs[-1]
            if last == "self":
                segs = segs[:-1]
                last = segs[-1] if segs else "self"
            results.append((segs, last))
        return results

    return tree([])


def line_of(src, at):
    return src.count("\n", 0, at) + 1


class Module:
    def __init__(self, path, file, parent):
        self.path = path  # ("crate", "a", "b")
        self.file = file
        self.parent = parent
        self.children = {}  # name -> Module
        self.imports = {}  # name -> list of segments (as written, relative to this module)
        self.globs = []  # segments
        self.items = set()


class Crate:
    def __init__(self, src_dir):
        self.src_dir = src_dir
        root = None
        for name in ("lib.rs", "main.rs"):
            if os.path.exists(os.path.join(src_dir, name)):
                root = os.path.join(src_dir, name)
                break
        if root is None:
            raise SystemExit(f"use-cycles: no lib.rs or main.rs in {src_dir}")
        self.refs = []  # (module, offset, segments, is a macro call)
        self.macros = {}  # macro name -> the file of its `macro_rules!`
        self.sources = {}
        self.root = self.load(root, ("crate",), None, os.path.dirname(root))

    def load(self, file, path, parent, child_dir):
        src = open(file, encoding="utf-8").read()
        self.sources[file] = src
        code = strip(src)
        code, dropped = cut_test_items(code)
        code, macro_paths, macros = cut_macros(code)
        for name in macros:
            self.macros[name] = file
        top = Module(path, file, parent)
        # Inline modules: (start, end, Module), innermost found by offset.
        regions = [(0, len(code), top)]
        for m in re.finditer(r"(?<![\w:])mod\s+(" + IDENT + r")\s*\{", code):
            name = m.group(1).removeprefix("r#")
            start, end = m.end() - 1, matching(code, m.end() - 1)
            owner = self.innermost(regions, m.start())
            mod = Module(owner.path + (name,), file, owner)
            owner.children[name] = mod
            regions.append((start, end, mod))
        # File modules.
        for m in re.finditer(r"(?<![\w:])mod\s+(" + IDENT + r")\s*;", code):
            name = m.group(1).removeprefix("r#")
            if name in dropped:
                continue
            owner = self.innermost(regions, m.start())
            pm = re.search(
                r'#\s*\[\s*path\s*=\s*"([^"]*)"\s*\]\s*(?:#\s*\[[^\]]*\]\s*)*'
                r"(?:pub(?:\s*\([^)]*\))?\s+)?$",
                src[max(0, m.start() - 300) : m.start()],
            )
            base = os.path.join(child_dir, *owner.path[len(top.path) :])
            if pm and owner is top:
                candidates = [os.path.join(os.path.dirname(file), pm.group(1))]
            else:
                candidates = [os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")]
            found = next((c for c in candidates if os.path.exists(c)), None)
            if found is None:
                print(f"use-cycles: {file}: module `{name}` not found", file=sys.stderr)
                continue
            if os.path.basename(found) == "mod.rs":
                sub_dir = os.path.dirname(found)
            else:
                sub_dir = os.path.join(os.path.dirname(found), name)
            owner.children[name] = self.load(found, owner.path + (name,), owner, sub_dir)
        # Names each module defines (nested ones such as methods too: the names only decide
        # whether a name reached through a glob import is defined there).
        for m in re.finditer(
            r"(?<![\w:'])(?:fn|struct|enum|union|trait|type|const|static)\s+(" + IDENT + r")", code
        ):
            owner = self.innermost(regions, m.start())
            owner.items.add(m.group(1).removeprefix("r#"))
        # Use declarations.
        for m in re.finditer(r"(?<![\w:])use\s+(?!<)([^;]*);", code):
            owner = self.innermost(regions, m.start())
            for segs, alias in use_tree(m.group(1)):
                if not segs or segs[0] == "":
                    continue
                if alias == "*":
                    owner.globs.append(segs)
                elif alias != "_":
                    owner.imports[alias] = segs
                self.refs.append((owner, m.start(), segs, False))
        use_spans = [(m.start(), m.end()) for m in re.finditer(r"(?<![\w:])use\s+[^;]*;", code)]
        # Paths in code.
        for m in re.finditer(r"(?<![\w:$])(" + IDENT + r")((?:\s*::\s*" + IDENT + r")+)(\s*!)?", code):
            if any(a <= m.start() < b for a, b in use_spans):
                continue
            owner = self.innermost(regions, m.start())
            first = m.group(1)
            if first in ("crate", "super", "self") or first in owner.children:
                segs = [first] + [s.removeprefix("r#") for s in re.findall(IDENT, m.group(2))]
                self.refs.append((owner, m.start(), segs, bool(m.group(3))))
        for at, segs, call in macro_paths:
            self.refs.append((top, at, segs, call))
        return top

    @staticmethod
    def innermost(regions, at):
        best = regions[0]
        for start, end, mod in regions:
            if start <= at < end and end - start <= best[1] - best[0]:
                best = (start, end, mod)
        return best[2]

    def resolve(self, module, segs, seen=None):
        """The module where `segs`, written in `module`, ends up (the module that defines the
        item), or None when the path leaves the crate. `seen` holds the lookups under way, so
        imports that name each other end instead of recursing."""
        seen = set() if seen is None else seen
        key = (module.path, tuple(segs))
        if key in seen:
            return None
        seen.add(key)
        try:
            return self.lookup(module, segs, seen)
        finally:
            seen.discard(key)

    def lookup(self, module, segs, seen):
        cur, i = module, 0
        if segs[0] == "crate":
            cur, i = self.root, 1
        elif segs[0] in ("self", "super"):
            while i < len(segs) and segs[i] in ("self", "super"):
                if segs[i] == "super":
                    cur = cur.parent
                    if cur is None:
                        return None
                i += 1
        elif segs[0] not in module.children and segs[0] not in module.imports:
            return None  # another crate
        return self.walk(module, cur, segs[i:], seen)

    def walk(self, module, cur, segs, seen):
        """The module where `segs` ends up, looked up from `cur` (`module` is where they are
        written)."""
        i = 0
        while i < len(segs):
            name = segs[i]
            if name in cur.children:
                cur, i = cur.children[name], i + 1
                continue
            target = cur.imports.get(name)
            if target is not None:
                return self.resolve(cur, target + segs[i + 1 :], seen)
            if name not in cur.items:
                for g in cur.globs:
                    gm = self.resolve(cur, g, seen)
                    if gm is not None and (
                        name in gm.children or name in gm.imports or name in gm.items
                    ):
                        return self.walk(module, gm, [name] + segs[i + 1 :], seen)
            return cur
        return cur

    def edges(self):
        """{(from_file, to_file): [(line, text)]}"""
        out = {}
        for module, at, segs, call in self.refs:
            if call and segs[-1] in self.macros:
                # A `#[macro_export]` macro is named from the crate root but lives in its file.
                to_file = self.macros[segs[-1]]
            else:
                to = self.resolve(module, segs)
                to_file = None if to is None else to.file
            if to_file is None or to_file == module.file:
                continue
            src = self.sources[module.file]
            line = line_of(src, at)
            text = src.splitlines()[line - 1].strip()
            out.setdefault((module.file, to_file), []).append((line, text))
        return out


def cycles(nodes, edges):
    """The strongly connected components of more than one file (Tarjan)."""
    succ = {n: sorted({b for (a, b) in edges if a == n}) for n in nodes}
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return comps


def main(argv):
    show_graph = "--graph" in argv
    dirs = [a for a in argv if a != "--graph"]
    if not dirs or any(a.startswith("-") for a in dirs):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    found = False
    for src_dir in dirs:
        crate = Crate(src_dir)
        edges = crate.edges()
        nodes = set(crate.sources)
        rel = lambda f: os.path.relpath(f)
        if show_graph:
            print(f"{src_dir}: {len(nodes)} files, {len(edges)} edges")
            for (a, b), why in sorted(edges.items()):
                print(f"  {rel(a)} -> {rel(b)}   ({rel(a)}:{why[0][0]}: {why[0][1]})")
        comps = cycles(nodes, edges)
        if not comps:
            print(f"{src_dir}: no use cycle between its {len(nodes)} files")
            continue
        found = True
        for comp in comps:
            print(f"{src_dir}: use cycle between {', '.join(rel(f) for f in comp)}:")
            for (a, b), why in sorted(edges.items()):
                if a in comp and b in comp:
                    line, text = why[0]
                    more = f" (and {len(why) - 1} more)" if len(why) > 1 else ""
                    print(f"  {rel(a)} -> {rel(b)}   {rel(a)}:{line}: {text}{more}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
