"""Kubernetes resource quantities ("500m", "1.5", "128Mi", "2G") as numbers."""

from __future__ import annotations

import re
from decimal import Decimal

_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(
    r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
)


def parse(value: str | int | float) -> Decimal:
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(
            f"quantities must match the regular expression {_QUANTITY.pattern}: {value!r}"
        )
    number, suffix = match.groups()
    return Decimal(number) * _SUFFIX[suffix or ""]
