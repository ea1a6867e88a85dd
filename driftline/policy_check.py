"""Does a policy name tools that exist? Its tool names against the `service.name`s reported.

A policy keyed by ``claude_code`` (underscore) matches no endpoint and flags nothing, silently.
This compares each tool name with what the tenant's endpoints have reported, and suggests the
closest known name. Pure: the caller reads the store and decides whether a warning is an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable

# service.name values of the tools Driftline is built for, known before any telemetry arrives
WELL_KNOWN = ("claude-code",)


def tool_warnings(
    tools: Iterable[str], reported: Collection[str] | None, unchecked_why: str | None = None
) -> list[str]:
    """One warning per tool name no endpoint reported; ``reported=None``: could not look.

    When the store could not be read (``unchecked_why``), say so rather than call every name
    unknown; a well-known name is still recognised and a near miss of one still suggested.
    """
    warnings = []
    known = sorted({*(reported or ()), *WELL_KNOWN})
    for tool in tools:
        if reported is not None and tool in reported:
            continue
        close = difflib.get_close_matches(tool, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close and close[0] != tool else ""
        if reported is None:
            if tool in WELL_KNOWN:
                continue
            warnings.append(f"tool {tool!r}: not checked ({unchecked_why}){hint}")
        elif not reported:
            if tool in WELL_KNOWN:
                continue
            warnings.append(
                f"tool {tool!r}: no endpoint of this tenant has reported telemetry yet, "
                f"so no service.name is known{hint}"
            )
        else:
            names = ", ".join(repr(n) for n in sorted(reported)[:10])
            names += ", …" if len(reported) > 10 else ""
            warnings.append(
                f"tool {tool!r}: no endpoint has reported this service.name{hint} "
                f"(reported: {names})"
            )
    return warnings
