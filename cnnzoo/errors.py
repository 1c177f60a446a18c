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


def first_sentence(exc: BaseException, limit: int = 160) -> str:
    """A library exception's first sentence, whole, for a one-line message: torch's and
    onnxruntime's run on for lines of advice, and a cut in mid-word reads as a bug."""
    import re

    text = " ".join(str(exc).split()) or type(exc).__name__
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[:limit].rsplit(" ", 1)[0] + " ..."
