"""The one exception type that means "the user gave us something we cannot use".

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback.
"""


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
