"""Print the configuration reference table of deploy/README.md from streams/settings.py.

    python deploy/config_table.py            # print the table
    python deploy/config_table.py --check    # exit 1 if deploy/README.md holds another table
    python deploy/config_table.py --write    # put the current table into deploy/README.md

Reads the source with ``ast`` (no import, so it runs without the project installed):
each ``Settings`` field, its default and the docstring under it, copied exactly
(``<`` and ``|`` are written as HTML entities so that Markdown renders them).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- config-table:begin -->", "<!-- config-table:end -->"


def rows() -> list[tuple[str, str, str, str]]:
    tree = ast.parse((ROOT / "streams" / "settings.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    out = []
    body = cls.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = ""
            nxt = body[i + 1] if i + 1 < len(body) else None
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                doc = nxt.value.value
            default = ast.literal_eval(node.value) if node.value is not None else None
            name = node.target.id
            out.append((name, f"FRESHREC_{name.upper()}", repr(default), doc))
    return out


def table() -> str:
    lines = ["| setting | variable | default | meaning |", "|---|---|---|---|"]
    for name, var, default, doc in rows():
        lines.append(f"| `{name}` | `{var}` | `{default}` | {doc.replace('|', '&#124;').replace('<', '&lt;')} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = table()
    path = ROOT / "deploy" / "README.md"
    readme = path.read_text()
    head, rest = readme.split(BEGIN, 1)
    current, tail = rest.split(END, 1)
    if "--write" in argv:
        path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
        return 0
    if "--check" in argv:
        current = current.strip()
        if current != text:
            print("deploy/README.md: configuration table is stale; regenerate with python deploy/config_table.py --write",
                  file=sys.stderr)
            return 1
        print("deploy/README.md: configuration table matches streams/settings.py")
        return 0
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
