"""A pytest plugin that serialises ``ast.parse`` across threads on CPython 3.11 before 3.11.8.

There the AST constructor keeps its recursion counter in one per-interpreter struct
(CPython gh-106905, fixed by gh-113035 in 3.11.8): when two threads build ASTs at once and a
garbage collection in one of them lets the other run, the counter ends unbalanced and
``ast.parse`` raises ``SystemError: AST constructor recursion depth mismatch``. pytest calls
``ast.parse`` to render every failure, and 3.11's ``traceback`` calls it to place its carets, so
a background thread that formats a traceback (an e2e backend, asyncio's exception logger) while a
failure is rendered turned one failing test into ``INTERNALERROR`` and stopped the whole run.
Holding one lock around ``ast.parse`` keeps two constructions from overlapping.
"""

from __future__ import annotations

import ast
import sys
import threading

AFFECTED = (3, 11) <= sys.version_info[:3] < (3, 11, 8)


def install() -> None:
    if not AFFECTED or getattr(ast.parse, "serialised", False):
        return
    parse, lock = ast.parse, threading.RLock()

    def serialised_parse(*args, **kwargs):  # type: ignore[no-untyped-def]
        with lock:
            return parse(*args, **kwargs)

    serialised_parse.serialised = True  # type: ignore[attr-defined]
    ast.parse = serialised_parse  # type: ignore[assignment]


install()
