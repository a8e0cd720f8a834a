"""A spy on the CPU GEMM driver's expansion layouts (private names: the tests check which blocking ran)."""

from __future__ import annotations


def spy_layouts(monkeypatch, *attrs):
    """Record, per expansion a driver sets up, attributes of its layout: one value per layout for one attribute
    (by default whether it packs its tables), a tuple for several."""
    from amsim.kernels.cpu import _gemm

    attrs = attrs or ("packed",)
    taken = []
    real = _gemm._Layout.__init__

    def init(self, *args, **kw):
        real(self, *args, **kw)
        values = tuple(getattr(self, a) for a in attrs)
        taken.append(values[0] if len(values) == 1 else values)

    monkeypatch.setattr(_gemm._Layout, "__init__", init)
    return taken
