"""Chart geometry for the reports: plain numbers the SVG templates (templates/charts.svg.j2) draw as rectangles,
lines and text. No plotting library: the pages must open offline under a ``default-src 'none'`` policy, and the
browser draws Korean labels in the page's own font (inline SVG text inherits the page's CSS)."""

from __future__ import annotations

from dataclasses import dataclass, field

WIDTH = 520  # viewBox width; the SVG scales to the page width (text stays legible on a phone)
LABEL_W = 150
VALUE_W = 120
ROW_H = 26
BAR_H = 16
TOP = 22


@dataclass
class Bar:
    label: str
    value: float | None  # 0..1
    lo: float | None = None
    hi: float | None = None
    note: str = ""
    kind: str = ""  # css class suffix: "", "delta-up", "delta-down", "missing"


@dataclass
class BarChart:
    """Horizontal bars on a 0..1 (or -1..1 for deltas) scale, one row each, with an optional interval whisker."""

    title: str
    bars: list[Bar]
    signed: bool = False  # deltas: zero in the middle
    width: int = WIDTH
    label_w: int = LABEL_W
    value_w: int = VALUE_W
    row_h: int = ROW_H
    bar_h: int = BAR_H
    top: int = TOP
    ticks: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        area = self.width - self.label_w - self.value_w
        lo_v, hi_v = (-1.0, 1.0) if self.signed else (0.0, 1.0)
        if self.signed:
            peak = max([abs(v) for b in self.bars for v in (b.value, b.lo, b.hi) if v is not None] or [0.0])
            scale = next((s for s in (0.04, 0.08, 0.2, 0.4, 0.8, 1.0) if peak <= s), 1.0)  # quarter ticks round
            lo_v, hi_v = -scale, scale

        def x(v: float) -> float:
            v = min(hi_v, max(lo_v, v))
            return round(self.label_w + (v - lo_v) / (hi_v - lo_v) * area, 2)

        zero = x(0.0)
        self.ticks = [{"x": x(lo_v + (hi_v - lo_v) * i / 4),
                       "text": _signed(lo_v + (hi_v - lo_v) * i / 4) if self.signed
                       else f"{(lo_v + (hi_v - lo_v) * i / 4) * 100:.0f}%"} for i in range(5)]
        for i, bar in enumerate(self.bars):
            y = self.top + i * self.row_h
            row = {"label": bar.label, "y": y, "text_y": y + self.bar_h - 3, "note": bar.note, "kind": bar.kind,
                   "bar": None, "whisker": None}
            if bar.value is not None:
                start, end = sorted((zero, x(bar.value)))
                row["bar"] = {"x": start, "w": max(round(end - start, 2), 1.0), "y": y, "h": self.bar_h}
                if bar.lo is not None and bar.hi is not None:
                    row["whisker"] = {"x1": x(bar.lo), "x2": x(bar.hi), "y": y + self.bar_h / 2}
            self.rows.append(row)
        self.zero = zero
        self.height = self.top + len(self.bars) * self.row_h + 8
        self.value_x = self.width - self.value_w + 8


def _signed(value: float) -> str:
    text = f"{value * 100:+.1f}".rstrip("0").rstrip(".")
    return ("0" if text in ("+0", "-0") else text) + "%"


@dataclass
class Reliability:
    """A reliability diagram: per confidence bin, the accuracy (bar) against the bin's mean confidence (mark),
    with the diagonal a calibrated model would follow."""

    title: str
    bins: list[dict]  # from the summary: lower, upper, n, confidence, accuracy
    size: int = 260
    margin: int = 44
    bars: list[dict] = field(default_factory=list)
    marks: list[dict] = field(default_factory=list)
    ticks: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        s, m = self.size, self.margin
        self.width = s + m + 12
        self.height = s + m + 12

        def px(v: float) -> float:
            return round(m + v * s, 2)

        def py(v: float) -> float:
            return round(12 + (1 - v) * s, 2)

        for b in self.bins:
            if not b.get("n"):
                continue
            x0, x1 = px(b["lower"]) + 1, px(b["upper"]) - 1
            self.bars.append({"x": x0, "w": round(x1 - x0, 2), "y": py(b["accuracy"]),
                              "h": round(py(0) - py(b["accuracy"]), 2) or 0.5, "n": b["n"],
                              "title": f"{b['lower']:.1f}-{b['upper']:.1f}: accuracy {b['accuracy']:.3f}, "
                                       f"confidence {b['confidence']:.3f}, n={b['n']}"})
            self.marks.append({"x1": x0, "x2": x1, "y": py(b["confidence"])})
        self.ticks = [{"v": f"{i / 4:.2f}", "x": px(i / 4), "y": py(i / 4)} for i in range(5)]
        self.diagonal = {"x1": px(0), "y1": py(0), "x2": px(1), "y2": py(1)}
        self.axis = {"x0": px(0), "y0": py(0), "x1": px(1), "y1": py(1)}
