"""JSON that is also valid Unicode.

JSON's grammar allows a ``\\uD800``-``\\uDFFF`` escape on its own (an unpaired surrogate);
Python decodes it into a ``str`` that no UTF-8 encoder will write. One such escape in a tool
name, a claim or a body must not make anything downstream raise: requests carrying one are
refused where they are parsed (``has_unpaired_surrogate``), and bodies we re-encode keep it
escaped (``dumps_utf8``).

Standard library only: ``authz.identity.jose`` (which backends import) uses it.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A surrogate escape in the JSON text (paired or not): the only way a decoded value can hold one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_unpaired_surrogate(text: str, value: Any) -> bool:
    """Whether ``value`` (``text`` decoded) holds an unpaired surrogate in any string or key.

    Costs one regex scan when ``text`` has no surrogate escape at all, which is nearly always.
    (A valid pair, as in an escaped emoji, decodes to one code point and is not reported.)
    """
    if _SURROGATE_ESCAPE.search(text) is None:
        return False
    return not_unicode(value)


def not_unicode(value: Any) -> bool:
    """Whether any string or object key in ``value`` holds a surrogate code point."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def replace_surrogates(value: Any) -> Any:
    """``value`` with every surrogate code point in its strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {replace_surrogates(k): replace_surrogates(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [replace_surrogates(v) for v in value]
    return value


def dumps_utf8(value: Any) -> bytes:
    """Compact JSON as UTF-8, non-ASCII characters written as themselves, except when a string
    holds an unpaired surrogate: then everything non-ASCII is ``\\u``-escaped, which any JSON
    reader decodes to exactly the same value."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")
