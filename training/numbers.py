"""Reading a number out of loose data: a JSON record, a config value, a table cell.

One rule for every such place (the metrics' figures, Compare's and the report's tables, the Studio's
progress): a real number becomes a ``float``; ``None``, a bool, anything that is not a real number,
and NaN (a figure that is undefined) become ``None``. Standard library only, so the Studio can use it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def as_float(value: Any, *, allow_nan: bool = False) -> float | None:
    """``value`` as a float, or None when it is not a real number (or is NaN, unless ``allow_nan``).

    numpy's numbers count as real numbers; strings do not (``"0.5"`` gives None).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if allow_nan or not math.isnan(number) else None
