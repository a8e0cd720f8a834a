"""The hardware cost of a multiplier circuit: power, area, delay (with their units in the field names), where the
numbers come from, and any published error metrics. A cost describes the circuit; it never changes a product, so
it is not part of a multiplier's identity (two multipliers with the same table are the same multiplier)."""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Cost"]


def _number(name, value):
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"cost {name}={value!r}: expected a number (or None).") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"cost {name}={value!r}: expected a finite number >= 0.")
    return v


@dataclasses.dataclass(frozen=True)
class Cost:
    """Hardware cost of one multiplier.

    Attributes:
        power_mw: power in mW (or a relative figure when ``relative`` is true).
        area_um2: area in µm².
        delay_ns: critical-path delay in ns.
        source: where the numbers come from (a library and file, a paper, "user").
        technology: the process / library they were obtained in, e.g. "PDK45 (45 nm)".
        relative: ``power_mw`` is relative to the exact multiplier of the same width (1.0) rather than absolute.
        published: other published figures, as ``((name, value), ...)``, e.g. ``(("MAE%", 0.081), ...)``.
    """

    power_mw: float | None = None
    area_um2: float | None = None
    delay_ns: float | None = None
    source: str = ""
    technology: str = ""
    relative: bool = False
    published: tuple = ()

    def __post_init__(self):
        for f in ("power_mw", "area_um2", "delay_ns"):
            object.__setattr__(self, f, _number(f, getattr(self, f)))
        pub = self.published.items() if isinstance(self.published, dict) else self.published
        object.__setattr__(self, "published", tuple((str(k), float(v)) for k, v in pub))

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["published"] = dict(self.published)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Cost:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"cost fields {sorted(unknown)} are not known; a cost has {sorted(known)}.")
        return cls(**d)

    def describe(self) -> str:
        """One line: ``0.301 mW, 558.9 µm², 1.36 ns (PDK45, EvoApproxLib)``."""
        unit = " (rel.)" if self.relative else " mW"
        parts = [f"{v:g}{u}" for v, u in ((self.power_mw, unit), (self.area_um2, " µm²"), (self.delay_ns, " ns"))
                 if v is not None]
        where = ", ".join(x for x in (self.technology, self.source) if x)
        return ", ".join(parts) + (f" ({where})" if where else "")
