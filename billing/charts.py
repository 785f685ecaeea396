"""Charts as inline SVG, drawn on the server: no JavaScript library, no CDN, works offline."""
from decimal import Decimal
from html import escape

COLORS = {"local": "#1a7f4b", "cloud": "#3756d6", "gemini": "#b54708", "idle": "#98a2b3", "spend": "#3756d6"}
WIDTH, HEIGHT, PAD = 640, 200, 28


def stacked_bars(rows: list[dict], series: tuple, title: str) -> str:
    """One bar per row (a day), stacked by series (local / cloud / gemini)."""
    real = max([sum(float(r[s]) for s in series) for r in rows] + [0])
    top = real or 1
    slot = (WIDTH - 2 * PAD) / max(len(rows), 1)
    parts = []
    for i, row in enumerate(rows):
        y = HEIGHT - PAD
        for name in series:
            h = (HEIGHT - 2 * PAD) * float(row[name]) / top
            if h > 0:
                y -= h
                parts.append(_rect(PAD + i * slot + 1, y, max(slot - 2, 1), h, COLORS[name],
                                   f"{row['day']}: {row[name]} {name}"))
    return _svg(title, parts, top, series, rows=rows, empty=not real)


def bars(rows: list[dict], key: str, title: str, money: bool = True) -> str:
    real = max([float(r[key]) for r in rows] + [0])
    top = real or 0.01
    slot = (WIDTH - 2 * PAD) / max(len(rows), 1)
    parts = []
    for i, row in enumerate(rows):
        h = (HEIGHT - 2 * PAD) * float(row[key]) / top
        label = f"{row['day']}: ${Decimal(row[key]):.2f}" if money else f"{row['day']}: {row[key]}"
        parts.append(_rect(PAD + i * slot + 1, HEIGHT - PAD - h, max(slot - 2, 1), h, COLORS["spend"], label))
    return _svg(title, parts, top, (), money=money, rows=rows, empty=not real)


def breakdown(items: dict, title: str) -> str:
    """Horizontal bars, one per category (a cost breakdown)."""
    top = max([float(v) for v in items.values()] + [0.01])
    row_h = 26
    height = PAD + row_h * len(items)
    parts = []
    for i, (name, value) in enumerate(items.items()):
        w = (WIDTH - 160) * float(value) / top
        y = 10 + i * row_h
        parts.append(f'<text x="0" y="{y + 15}" font-size="12">{escape(name)}</text>')
        parts.append(_rect(80, y, max(w, 1), 18, COLORS.get(name, "#3756d6"), f"{name}: ${Decimal(value):.2f}"))
        parts.append(f'<text x="{86 + w}" y="{y + 14}" font-size="12">${Decimal(value):.2f}</text>')
    return (f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {height}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{"".join(parts)}</svg>')


def _rect(x, y, w, h, color, label) -> str:
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="{color}">'
            f'<title>{escape(label)}</title></rect>')


def _days(rows) -> str:
    """First and last day under the x axis, so a bar can be placed in time."""
    if not rows:
        return ""
    first, last = rows[0]["day"], rows[-1]["day"]
    return (f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="11" fill="#667085">{escape(str(first))}</text>'
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="11" fill="#667085" text-anchor="end">'
            f'{escape(str(last))}</text>')


def _svg(title, parts, top, series, money=False, rows=(), empty=False) -> str:
    # An empty period says so; it does not draw a scale ("max $0.01") for numbers it does not have.
    scale = ("nothing in this period" if empty else
             f'max {"$" if money else ""}{top:.2f}' if money or top != int(top) else f"max {int(top)}")
    axis = (f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#98a2b3"/>'
            f'<text x="{PAD}" y="{PAD - 8}" font-size="11" fill="#667085">{scale}</text>{_days(rows)}')
    legend = "".join(f'<rect x="{WIDTH - PAD - 90 * (len(series) - i)}" y="4" width="10" height="10" '
                     f'fill="{COLORS[name]}"/><text x="{WIDTH - PAD - 90 * (len(series) - i) + 14}" y="13" '
                     f'font-size="11">{name}</text>' for i, name in enumerate(series))
    return (f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>{axis}{legend}{"".join(parts)}</svg>')
