// Plain SVG charts for the Analytics page: bars and lines over slots (time buckets, histogram bins),
// axes with round ticks, a <title> tooltip on every slot. Drawn here, with no library: the console
// fetches nothing at run time but its own API. Colours come from classes in app.css (the CSP allows no
// inline style).
const SVG = "http://www.w3.org/2000/svg";
const TICK_SPACING = 64;  // pixels a tick label needs at least

export function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// A top at or above `max` and a step that divides it into about five round ticks.
export function niceScale(max, integer) {
  if (!(max > 0)) return { top: integer ? 4 : 1, step: integer ? 1 : 0.25 };
  const raw = max / 5;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const multiples = integer ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
  let step = multiples.map((m) => m * magnitude).find((s) => s >= raw);
  if (integer) step = Math.max(1, Math.round(step));
  return { top: Math.ceil(max / step - 1e-9) * step, step };
}

export function number(value) {
  if (value === null || value === undefined) return "—";
  return Number.isInteger(value) ? value.toLocaleString() : value.toLocaleString(undefined, { maximumFractionDigits: 2 });
}

function scaleOf(series, integer) {
  const values = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  return niceScale(Math.max(0, ...values), integer);
}

function yAxis(scale, left, right, top, plotHeight, side) {
  const nodes = [];
  for (let value = 0; value <= scale.top + 1e-9; value += scale.step) {
    const y = top + plotHeight - (value / scale.top) * plotHeight;
    if (side === "left") nodes.push(svg("line", { class: "grid", x1: left, x2: right, y1: y, y2: y }));
    const x = side === "left" ? left - 8 : right + 8;
    nodes.push(svg("text", { class: "tick", x, y: y + 4, "text-anchor": side === "left" ? "end" : "start" }, number(value)));
  }
  return nodes;
}

// slots: [{label, day?, tip}]; series: [{metric, name, type: "bar"|"line", cls, values, axis?, dashed?}];
// width: the pixels it is shown at (one unit a pixel, so text keeps its size in a narrow card);
// everyLabel: a label under every slot (a histogram's bins), slanted where they would not fit side by side
export function chart({ slots, series, yTitle, yTitleRight = "", integer = true, label = "", width = 1000, height = 300, everyLabel = false }) {
  const hasRight = series.some((s) => s.axis === "right");
  const longest = Math.max(0, ...slots.map((slot) => (slot.label || "").length));
  const slant = everyLabel && (width - 80) / Math.max(1, slots.length) < longest * 7 + 8;
  const margin = { left: 64, right: hasRight ? 64 : 16, top: 12, bottom: slant ? 16 + longest * 5 : 42 };
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  const n = slots.length;
  if (!n) return root;
  const slotWidth = plotWidth / n;
  const xOf = (i) => margin.left + i * slotWidth;
  const left = scaleOf(series.filter((s) => s.axis !== "right"), integer);
  const right = scaleOf(series.filter((s) => s.axis === "right"), false);
  const yOf = (value, axis) => {
    const scale = axis === "right" ? right : left;
    return margin.top + plotHeight - (value / scale.top) * plotHeight;
  };
  root.append(...yAxis(left, margin.left, width - margin.right, margin.top, plotHeight, "left"));
  if (hasRight) root.append(...yAxis(right, margin.left, width - margin.right, margin.top, plotHeight, "right"));
  root.append(svg("text", { class: "axis-title", transform: `translate(16 ${margin.top + plotHeight / 2}) rotate(-90)`, "text-anchor": "middle" }, yTitle));
  if (hasRight) {
    root.append(svg("text", { class: "axis-title", transform: `translate(${width - 10} ${margin.top + plotHeight / 2}) rotate(90)`, "text-anchor": "middle" }, yTitleRight));
  }
  // bars side by side within a slot, a thin gap between slots where there is room
  const bars = series.filter((s) => s.type === "bar");
  const groupWidth = slotWidth > 6 ? slotWidth * 0.8 : slotWidth;
  const barWidth = bars.length ? groupWidth / bars.length : 0;
  bars.forEach((s, j) => {
    s.values.forEach((value, i) => {
      if (value === null || value === undefined) return;
      const y = yOf(value, s.axis);
      root.append(svg("rect", {
        class: `bar ${s.cls}`, x: xOf(i) + (slotWidth - groupWidth) / 2 + j * barWidth, y, width: Math.max(0.5, barWidth - (barWidth > 3 ? 1 : 0)),
        height: margin.top + plotHeight - y, "data-metric": s.metric, "data-value": value, "data-slot": i,
      }));
    });
  });
  for (const s of series.filter((s) => s.type === "line")) {
    let d = "";
    let drawing = false;
    s.values.forEach((value, i) => {
      if (value === null || value === undefined) { drawing = false; return; }
      d += `${drawing ? "L" : "M"}${(xOf(i) + slotWidth / 2).toFixed(1)},${yOf(value, s.axis).toFixed(1)}`;
      drawing = true;
    });
    root.append(svg("path", { class: `line ${s.cls}${s.dashed ? " dashed" : ""}`, d, "data-metric": s.metric }));
    // a marker on every point where there are few; where there are many, on a point with no neighbour
    // (a line of one point is no line)
    const present = (i) => i >= 0 && i < n && s.values[i] !== null && s.values[i] !== undefined;
    s.values.forEach((value, i) => {
      const alone = !present(i - 1) && !present(i + 1);
      if (!present(i) || (n > 96 && !alone)) return;
      root.append(svg("circle", { class: `dot ${s.cls}`, cx: xOf(i) + slotWidth / 2, cy: yOf(value, s.axis), r: alone ? 4.5 : 3, "data-metric": s.metric, "data-slot": i }));
    });
  }
  root.append(svg("line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: margin.top + plotHeight, y2: margin.top + plotHeight }));
  // a label every few slots; under it the day, where it is not the previous label's day
  const every = everyLabel ? 1 : Math.ceil(n / Math.max(2, Math.floor(plotWidth / TICK_SPACING)));
  let lastDay = null;
  let dayEnd = -Infinity;  // where the last day label drawn ends: the next one starts clear of it
  slots.forEach((slot, i) => {
    if (i % every || !slot.label) return;
    const x = xOf(i) + slotWidth / 2;
    const y = margin.top + plotHeight + 18;
    root.append(svg("line", { class: "axis", x1: x, x2: x, y1: margin.top + plotHeight, y2: margin.top + plotHeight + 4 }));
    root.append(slant
      ? svg("text", { class: "tick", x: x + 4, y: y - 4, "text-anchor": "end", transform: `rotate(-40 ${x + 4} ${y - 4})` }, slot.label)
      : svg("text", { class: "tick", x, y, "text-anchor": "middle" }, slot.label));
    if (slot.day && slot.day !== lastDay && x - slot.day.length * 3.5 > dayEnd) {
      root.append(svg("text", { class: "tick day", x, y: margin.top + plotHeight + 34, "text-anchor": "middle" }, slot.day));
      dayEnd = x + slot.day.length * 3.5 + 8;
    }
    lastDay = slot.day;
  });
  // on top of everything: a slot-high target per slot whose tooltip names every value in it
  slots.forEach((slot, i) => {
    const tip = [slot.tip, ...series.map((s) => `${s.name}: ${number(s.values[i])}`)].join("\n");
    root.append(svg("rect", { class: "hover", x: xOf(i), y: margin.top, width: slotWidth, height: plotHeight, "data-slot": i }, svg("title", {}, tip)));
  });
  return root;
}
