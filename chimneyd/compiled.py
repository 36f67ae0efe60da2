"""What the optional compiled build needs of the source, and whether the running code is it.

The source stays plain Python: every module runs as it is, and `make test` tests it so.
`make compiled` (optional) copies the checkout to `build/compiled/` and compiles there, with
mypyc, the modules on the data path (`deploy/compiled-modules.txt`); `COMPILED=1` on a make
target runs from that copy. mypyc turns a class into a C type, which Python code may subclass
only when the class says so: `mypyc_attr(allow_interpreted_subclasses=True)` on the base
classes that tests, stubs and the other drivers extend. Without mypy's extensions installed
(a runtime-only install) the decorator does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr
else:
    try:
        from mypy_extensions import mypyc_attr
    except ImportError:  # a runtime install: nothing is compiled, nothing to mark

        def mypyc_attr(*attrs: str, **kwattrs: Any) -> Callable[[T], T]:
            return lambda cls: cls


def is_compiled() -> bool:
    """True when the data path runs from the compiled build: the broker's module, imported
    first by every other, is then an extension, not a `.py` file."""
    from chimneyd.ndis import broker

    return not (broker.__file__ or "").endswith(".py")


def build_name() -> str:
    """What `stack.info` and the daemon's ready line call this build."""
    return "compiled" if is_compiled() else "python"


__all__ = ["build_name", "is_compiled", "mypyc_attr"]
