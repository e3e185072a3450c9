"""The shape of the code: no function in lars_jax/ over 80 code lines (issue 26).

The rule: a function's code lines are the lines from its first statement after its
docstring to its last line, less blank lines and lines holding only a comment. Its
signature, decorators and docstring do not count; continuation lines of a statement do
(a call written over three lines is three lines), and so do the lines of the functions
and classes nested in it (an inner function counts in the function around it, and on its
own).
"""

from __future__ import annotations

import ast
import pathlib
import textwrap

import lars_jax

MAX_CODE_LINES = 80
PACKAGE = pathlib.Path(lars_jax.__file__).parent


def _start(stmt: ast.stmt) -> int:
    """The first line of a statement, its decorators included."""
    return min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])


def code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """The code lines of `fn` (module docstring), `lines` being its file's lines."""
    body = fn.body
    first = body[0]
    if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        body = body[1:]
    if not body:
        return 0
    text = lines[_start(body[0]) - 1:fn.end_lineno]
    return sum(1 for line in text if line.strip() and not line.strip().startswith("#"))


def long_functions(source: str, limit: int = MAX_CODE_LINES) -> list[tuple[str, int, int]]:
    """``(name, line, code lines)`` of every function of `source` over `limit` code lines."""
    lines = source.splitlines()
    return [(node.name, node.lineno, n) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (n := code_lines(node, lines)) > limit]


def test_no_function_in_lars_jax_over_80_code_lines():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20  # the walk sees the package
    too_long = [f"{path.relative_to(PACKAGE.parent)}:{line} {name} ({n} code lines)"
                for path in files
                for name, line, n in long_functions(path.read_text())]
    assert not too_long, "functions over 80 code lines:\n" + "\n".join(too_long)


def _function(code_line_count: int) -> str:
    """A function with `code_line_count` code lines, padded with everything that does not
    count: signature over two lines, decorator, docstring, blank and comment lines."""
    body = []
    for i in range(code_line_count - 2):
        body.append(f"x{i} = {i}")
        if i % 10 == 0:
            body += ["", "    # a comment line"]
    body += ["return (x0 +", "        1)"]  # a statement over two lines: two code lines
    return ("@decorator\n"
            "def f(a,\n"
            "      b):\n"
            '    """Docstring.\n\n    Over several lines.\n    """\n'
            + textwrap.indent("\n".join(body), "    ") + "\n\n# after the function\n")


def test_code_line_count_follows_the_rule():
    for n in (3, 80, 81):
        source = _function(n)
        assert code_lines(ast.parse(source).body[0], source.splitlines()) == n
    assert long_functions(_function(80)) == []
    assert long_functions(_function(81)) == [("f", 2, 81)]
    # a nested function counts in the function around it (its signature, decorator and
    # docstring too: 1 + 2 + 3 + 81 + the return), and on its own
    nested = "def outer():\n" + textwrap.indent(_function(81), "    ") + "    return f\n"
    assert long_functions(nested) == [("outer", 1, 88), ("f", 3, 81)]
