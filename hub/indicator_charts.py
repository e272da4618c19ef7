"""The indicators page's charts, drawn on the server as SVG by pygal (a maintained library,
pure Python: about 80 ms to import once and 10 ms per chart; no script, nothing fetched).

Each chart is embedded as an ``<img>`` of a ``data:`` URI: an SVG shown as an image runs no
script and keeps its own styles, so the page's Content-Security-Policy stays strict
(``script-src 'self'``, no inline style) and the charts print like pictures.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pygal
from pygal.style import Style

PROVINCE_NAMES = {"SH": "上海", "JS": "江苏", "ZJ": "浙江", "AH": "安徽"}
FONT = '"Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "Droid Sans Fallback", sans-serif'
# print-safe: dark on white, colours that stay apart in greyscale
STYLE = Style(background="white", plot_background="white", foreground="#222",
              foreground_strong="#000", foreground_subtle="#666", font_family=FONT,
              label_font_family=FONT, major_label_font_family=FONT, value_font_family=FONT,
              title_font_family=FONT, legend_font_family=FONT, tooltip_font_family=FONT,
              title_font_size=18, legend_font_size=13, label_font_size=12,
              major_label_font_size=12, value_font_size=11,
              colors=("#1f4e79", "#c55a11", "#548235", "#7f6000", "#7030a0", "#404040"))


@dataclass(frozen=True)
class Chart:
    key: str  # the element's id, for tests and links
    title: str
    uri: str  # data:image/svg+xml;base64,...


def _config(**extra: Any) -> dict[str, Any]:
    return {"style": STYLE, "js": [], "disable_xml_declaration": True, "width": 720,
            "height": 360, "legend_at_bottom": True, "print_values": False,
            "truncate_label": -1, "no_data_text": "本月无数据", **extra}


def _uri(chart) -> str:
    svg = chart.render(is_unicode=True)  # without the XML declaration pygal gives text
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def whole_ticks(values: list) -> list[int]:
    """Axis labels for counts: whole numbers from 0 past the largest, at most about 10."""
    top = max([int(v) for v in values if v] + [1])
    step = max(1, -(-top // 10))
    return list(range(0, top + step, step))


def province_bars(key: str, title: str, body: dict, section: str, series: dict[str, str]) -> Chart:
    """Bars per province of ``section``'s figures named in ``series`` (figure -> label)."""
    values = {label: [body["provinces"][p][section][figure] for p in body["provinces"]]
              for figure, label in series.items()}
    chart = pygal.Bar(**_config(title=title, y_labels=whole_ticks(sum(values.values(), []))))
    chart.x_labels = [PROVINCE_NAMES[p] for p in body["provinces"]]
    for label, numbers in values.items():
        chart.add(label, numbers)
    return Chart(key, title, _uri(chart))


def trend(key: str, title: str, months: list[dict], value, counts: bool = True) -> Chart:
    """A line per province over ``months`` (oldest first) of ``value(province figures)``;
    ``counts``: whole-number axis labels."""
    lines = {name: [value(m["provinces"][code]) for m in months] for code, name in PROVINCE_NAMES.items()}
    extra = {"y_labels": whole_ticks(sum(lines.values(), []))} if counts else {}
    chart = pygal.Line(**_config(title=title, **extra))
    chart.x_labels = [m["month"][2:] for m in months]
    for name, numbers in lines.items():
        chart.add(name, numbers)
    return Chart(key, title, _uri(chart))


def lagging_bars(key: str, title: str, lagging: list[dict]) -> Chart:
    """Horizontal bars of the lagging hospitals' rejection rate (percent), the most lagging on
    top (pygal draws the first label at the bottom)."""
    chart = pygal.HorizontalBar(**_config(title=title, height=max(240, 60 + 32 * len(lagging)),
                                          show_legend=False, print_values=True,
                                          value_formatter=lambda v: f"{v:.1f}%"))
    chart.x_labels = [row["hospital"] for row in reversed(lagging)]
    chart.add("退回率", [float(row["rejection_rate"]) for row in reversed(lagging)])
    return Chart(key, title, _uri(chart))


def rejection_rate(records: dict) -> Decimal:
    """Rejected per hundred received (two places); 0 when nothing was received."""
    if not records["received"]:
        return Decimal("0.00")
    return (Decimal(records["rejected"]) * 100 / records["received"]).quantize(Decimal("0.01"))
