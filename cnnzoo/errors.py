"""The one exception type that means "the user gave us something we cannot use".

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback. The helpers below shape what such a line says:
:func:`short_reason` (a library's error as one clause), :func:`terminal_safe` (names that hold
control characters written out, so that nothing printed acts on the terminal).
"""

import re


class UserError(Exception):
    """Bad input (config, file, network description) explained in one sentence."""


class ConfigError(UserError):
    """A config file or ``--set`` override that does not validate."""


class ShapeError(UserError):
    """A layer list that cannot be built or cannot carry the input shape through."""


class DataError(UserError):
    """A data folder, image or source that cannot be used as asked."""


def shape_text(shape) -> str:
    """A tensor shape as people read it in messages and tables: ``3x32x32`` (an image's C, H, W)."""
    return "x".join(str(s) for s in shape)


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """What a library's exception says, as one complete clause for a one-line message.

    The first line, cut where a clause ends (``, `` ``; `` ``. `` ``: ``) when longer than
    ``limit``, never in the middle of a word: torch and huggingface_hub put their advice
    after the reason, and a cut at a fixed width left "try aga".
    """
    text = str(exc).strip()
    first = text.splitlines()[0].strip() if text else type(exc).__name__
    if len(first) <= limit:
        return first
    head = first[:limit]
    cut = max(head.rfind(mark) for mark in (", ", "; ", ". ", ": "))
    if cut < limit // 3:
        cut = head.rfind(" ")
    return head[: cut if cut > 0 else limit].rstrip(" ,;:.") + " ..."


# C0 controls but tab and newline, DEL, C1 controls (U+0080-U+009F, the 8-bit ESC and CSI among
# them), and the bidirectional overrides and isolates that reorder what a terminal shows
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_AND_NEWLINES = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str, *, one_line: bool = False) -> str:
    """``text`` with every control character written out as Python writes it (ESC as ``\\x1b``),
    so that nothing in it acts on the terminal; tabs and newlines are kept unless ``one_line``."""
    return (_CONTROLS_AND_NEWLINES if one_line else _CONTROLS).sub(_escaped, text)
