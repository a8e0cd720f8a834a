"""Tables as text, Markdown, LaTeX (booktabs) or CSV: one formatter for every table amsim prints or writes."""

from __future__ import annotations

import csv
import io
import re

__all__ = ["format_rows", "FORMATS"]

FORMATS = ("text", "md", "latex", "csv")

_LATEX = str.maketrans({"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
                        "{": r"\{", "}": r"\}", "±": r"$\pm$", "Δ": r"$\Delta$", "—": "--", "^": r"\^{}",
                        "~": r"\~{}"})


_NUMBER = re.compile(r"[-+]?[\d,.]+( ± [\d.]+)?%?|—|")


def _numeric(rows, j) -> bool:
    """Column ``j`` holds numbers (right-aligned) when every cell is one, or a dash for none."""
    return bool(rows) and all(_NUMBER.fullmatch(str(r[j]).strip()) for r in rows)


def format_rows(head: list[str], rows: list[list[str]], fmt: str = "text") -> str:
    """A table as aligned text, a Markdown table, a LaTeX ``tabular`` (booktabs) or CSV; columns of numbers are
    right-aligned, the others left-aligned.

    Arguments:
        head: column titles.
        rows: cells, as strings.
        fmt: "text", "md", "latex" or "csv".

    Returns:
        The table (no trailing newline, except CSV's line ends).
    """
    rows = [[str(c) for c in r] for r in rows]
    right = [_numeric(rows, j) for j in range(len(head))]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(head)
        w.writerows(rows)
        return buf.getvalue()
    if fmt == "md":
        esc = lambda v: str(v).replace("|", r"\|")  # noqa: E731
        lines = ["| " + " | ".join(map(esc, head)) + " |", "| " + " | ".join("---:" if r else ":---" for r in right)
                 + " |"]
        return "\n".join(lines + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])
    if fmt == "latex":
        esc = lambda v: str(v).translate(_LATEX)  # noqa: E731
        lines = [r"\begin{tabular}{" + "".join("r" if r else "l" for r in right) + "}", r"\toprule",
                 " & ".join(map(esc, head)) + r" \\", r"\midrule"] + \
            [" & ".join(map(esc, r)) + r" \\" for r in rows] + [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)
    if fmt != "text":
        raise ValueError(f"format {fmt!r}: choose text, md, latex or csv.")
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]
    line = lambda r: "  ".join(x.rjust(w) if a else x.ljust(w)  # noqa: E731
                               for x, w, a in zip(r, widths, right, strict=True)).rstrip()
    return "\n".join([line(head), "-" * (sum(widths) + 2 * (len(widths) - 1))] + [line(r) for r in rows])
