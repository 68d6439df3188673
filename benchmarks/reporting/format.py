"""How the report writes a number: measured values with the digits a comparison needs, the
paper's figures exactly as printed, and a verdict per comparison."""

def fmt(value: float | None) -> str:
    """A measured value with enough digits to compare against the paper's rounded figures."""
    if value is None:
        return "–"
    magnitude = abs(value)
    digits = 0 if magnitude >= 1000 else 1 if magnitude >= 100 else 2 if magnitude >= 1 else 3
    return f"{value:,.{digits}f}" if magnitude >= 0.01 or value == 0 else f"{value:.2g}"

def paper(figure) -> str:
    """A paper figure exactly as printed."""
    return "–" if figure is None else f"{figure.value:g}"

def compare(paper, measured: float | None, tolerance: float) -> tuple[str, str]:
    """(delta, verdict word) for one paper figure and one measurement."""
    if paper is None:
        return "", ""
    if measured is None:
        return "", "not measured"
    delta = measured / paper.value - 1
    return f"{delta:+.1%}", "reproduced" if abs(delta) <= tolerance else "differs"

def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b
