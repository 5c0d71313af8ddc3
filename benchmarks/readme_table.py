"""Write a results table between its markers in benchmarks/README.md (shared by the benchmarks)."""
from __future__ import annotations

import os

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")


def write_block(name: str, content: str, path: str = README) -> None:
    """Put ``content`` between ``<!-- name -->`` and ``<!-- /name -->`` in ``path`` (appended with
    its markers where they are missing); written atomically."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = open(path).read() if os.path.exists(path) else ""
    block = f"{begin}\n{content}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n" + block + "\n"
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)
