"""One-line error messages: the rule every CLI of the suite keeps."""


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of ``exc``'s message; ``default`` (the exception's type name unless
    given) when it has none."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default
