// Analytics: counts over time for one rule of one camera — a line's crossings in and out as bars, a zone's
// occupancy and a crowd's peak as lines, a dwell rule's departures and its histogram — the range's totals,
// the camera's heatmap, and the CSV of exactly what the chart shows. The choices live in the page's URL.
import { api, el, getJSON, start } from "/static/common.js";
import { chart, number } from "/static/chart.js";

const BUCKETS = [["900", "15 minutes"], ["3600", "Hour"], ["86400", "Day (UTC)"]];
const RANGES = [["today", "Today"], ["yesterday", "Yesterday"], ["7d", "Last 7 days"], ["custom", "Custom"]];
const PER = { 900: "per 15 minutes", 3600: "per hour", 86400: "per day" };
const ADDITIVE = new Set(["in", "out", "dwell_count"]);  // labels add up: "all labels" is their sum
// what each kind of rule shows: its metrics, as bars or lines, and the left axis' title
const SHOWN = {
  line: { series: [["in", "In", "bar", "s-in"], ["out", "Out", "bar", "s-out"]], title: "crossings" },
  zone: { series: [["occupancy_mean", "Mean occupancy", "line", "s-mean"], ["occupancy_max", "Peak occupancy", "line", "s-peak"]], title: "objects in the zone", perBucket: false },
  dwell: { series: [["dwell_count", "Objects that left", "bar", "s-in"]], title: "objects that left" },
  crowd: { series: [["crowd_max", "Peak crowd", "line", "s-peak"]], title: "objects (peak)", perBucket: false },
};
const DWELL_UNITS = [[3600, "h"], [60, "min"], [1, "s"]];

const main = document.getElementById("main");
const select = (id) => el("select", { id });
const controls = {
  camera: select("camera"), rule: select("rule"), label: select("label"), range: select("range"), bucket: select("bucket"),
  from: el("input", { id: "from", type: "datetime-local" }), to: el("input", { id: "to", type: "datetime-local" }),
};
const custom = [el("label", { class: "custom" }, "From", controls.from), el("label", { class: "custom" }, "To", controls.to)];
const csv = el("a", { id: "csv", class: "button", download: "" }, "Download CSV");
const banner = el("div", { id: "banner", class: "banner hidden" });
const totals = el("div", { class: "stats", id: "totals" });
const heading = el("div", { class: "chart-title", id: "chart-title" });
const legend = el("div", { class: "legend", id: "legend" });
const chartBox = el("div", { id: "chart" });
const dwellCard = el("div", { class: "card hidden", id: "dwell-card" });
const heatImage = el("img", { id: "heatmap", alt: "heatmap" });
const heatNote = el("div", { class: "muted", id: "heatmap-note" });
main.append(
  el("h1", {}, "Analytics"),
  el("form", { class: "filters", id: "filters" },
    el("label", {}, "Camera", controls.camera), el("label", {}, "Rule", controls.rule), el("label", {}, "Label", controls.label),
    el("label", {}, "Range", controls.range), custom, el("label", {}, "Bucket", controls.bucket), csv),
  banner,
  el("div", { class: "card" }, el("div", { class: "body" }, totals)),
  el("div", { class: "card chart-card" }, el("div", { class: "body" }, el("div", { class: "chart-head" }, heading, legend), chartBox)),
  el("div", { class: "analytics-lower" },
    el("div", { class: "card heat" }, el("div", { class: "body" },
      el("div", { class: "chart-title" }, "Where tracked objects went"), heatImage,
      el("div", { class: "heat-legend" }, el("span", {}, "fewer"), el("span", { class: "heat-scale" }), el("span", {}, "more (log scale)")),
      heatNote)),
    dwellCard),
);
for (const [value, text] of RANGES) controls.range.append(el("option", { value }, text));
for (const [value, text] of BUCKETS) controls.bucket.append(el("option", { value }, text));

let catalog = null;
let heatURL = null;
let generation = 0;
let redraw = null;  // the charts again, at the page's new width

function show(message) {
  banner.textContent = message || "";
  banner.className = message ? "banner bad" : "banner hidden";
}

function fill(node, options, wanted) {
  node.replaceChildren(...options.map(([value, text]) => el("option", { value }, text)));
  if (options.some(([value]) => value === wanted)) node.value = wanted;
}

function iso(date) {
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function localInput(date) {  // a Date as a datetime-local input's value, in the browser's time zone
  const shifted = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 16);
}

// [from, to] of the chosen range: days are the browser's days (buckets themselves are UTC aligned)
function span() {
  const now = new Date();
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  switch (controls.range.value) {
    case "yesterday": return [new Date(midnight.getTime() - 86400000), midnight];
    case "7d": return [new Date(now.getTime() - 7 * 86400000), now];
    case "custom": return [new Date(controls.from.value), new Date(controls.to.value)];
    default: return [midnight, now];
  }
}

function current() {
  const camera = catalog.cameras.find((c) => c.name === controls.camera.value);
  const rule = camera && camera.rules.find((r) => r.name === controls.rule.value);
  return { camera, rule };
}

// the selects from the catalog, keeping what was chosen (or what the URL asked for)
function choose(wanted) {
  fill(controls.camera, catalog.cameras.map((c) => [c.name, c.name]), wanted.camera);
  const camera = catalog.cameras.find((c) => c.name === controls.camera.value);
  const rules = camera ? camera.rules : [];
  fill(controls.rule, rules.map((r) => [r.name, `${r.name} (${r.kind})${r.in_site_file ? "" : " — removed"}`]), wanted.rule);
  const rule = rules.find((r) => r.name === controls.rule.value);
  const labels = rule ? rule.labels : camera ? camera.labels : [];
  const metrics = rule ? SHOWN[rule.kind].series.map(([metric]) => metric) : [];
  const summable = metrics.every((m) => ADDITIVE.has(m)) || labels.length <= 1;
  const choices = rule && rule.kind === "crowd" ? [] : labels.map((l) => [l, l]);  // a crowd counts every label together
  fill(controls.label, [...(summable ? [["", "All labels"]] : []), ...choices], wanted.label ?? "");
}

function query() {
  const { rule } = current();
  const [from, to] = span();
  const parameters = new URLSearchParams({ camera: controls.camera.value, rule: controls.rule.value });
  if (controls.label.value) parameters.set("label", controls.label.value);
  parameters.set("metric", SHOWN[rule.kind].series.map(([metric]) => metric).join(","));
  parameters.set("from", iso(from));
  parameters.set("to", iso(to));
  parameters.set("bucket", controls.bucket.value);
  return parameters;
}

function remember() {
  const state = new URLSearchParams({ camera: controls.camera.value, rule: controls.rule.value, label: controls.label.value, range: controls.range.value, bucket: controls.bucket.value });
  if (controls.range.value === "custom") { state.set("from", controls.from.value); state.set("to", controls.to.value); }
  history.replaceState(null, "", `/analytics?${state}`);
}

async function answer(path) {
  const response = await api(path);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

function slotsOf(points, bucket) {
  const utcDay = new Intl.DateTimeFormat(undefined, { timeZone: "UTC", weekday: "short", day: "numeric", month: "short" });
  const time = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
  const day = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short" });
  return points.map((point) => {
    const start = new Date(point.start);
    if (bucket >= 86400) return { label: utcDay.format(start), tip: `${utcDay.format(start)} (UTC)` };
    const end = new Date(start.getTime() + bucket * 1000);
    return { label: time.format(start), day: day.format(start), tip: `${day.format(start)} ${time.format(start)}–${time.format(end)}` };
  });
}

function stat(key, value, text) {
  return el("div", { "data-total": key }, el("b", {}, value), text);
}

function peak(slots, values) {  // the largest value, and in which bucket
  let best = -1;
  values.forEach((v, i) => { if (v !== null && (best < 0 || v > values[best])) best = i; });
  return best < 0 || !values[best] ? "—" : `${number(values[best])} · ${slots[best].tip}`;
}

function showTotals(kind, data, slots, dwell) {
  const t = data.totals;
  const column = (metric) => data.points.map((p) => p[metric]);
  const stats = {
    line: () => {
      const both = data.points.map((p) => p.in + p.out);
      return [stat("in", number(t.in), "In"), stat("out", number(t.out), "Out"), stat("net", number(t.in - t.out), "Net (in − out)"),
        stat("busiest", peak(slots, both), "Busiest bucket (in + out)")];
    },
    zone: () => [stat("occupancy_mean", number(t.occupancy_mean), "Mean occupancy"), stat("occupancy_max", number(t.occupancy_max), "Peak occupancy"),
      stat("when", peak(slots, column("occupancy_max")), "Fullest bucket")],
    dwell: () => [stat("dwell_count", number(t.dwell_count), "Objects that left"),
      stat("p50", dwell && dwell.p50_s !== null ? `≈ ${duration(dwell.p50_s)}` : "—", "Median stay (p50)"),
      stat("p90", dwell && dwell.p90_s !== null ? `≈ ${duration(dwell.p90_s)}` : "—", "90 % left within (p90)")],
    crowd: () => [stat("crowd_max", number(t.crowd_max), "Peak crowd"), stat("when", peak(slots, column("crowd_max")), "Most crowded bucket")],
  }[kind]();
  totals.replaceChildren(...stats);
}

function duration(seconds) {
  const [unit, name] = DWELL_UNITS.find(([u]) => seconds >= u) || [1, "s"];
  return `${number(Math.round((seconds / unit) * 10) / 10)} ${name}`;
}

function widthOf(node) {  // the chart's width in pixels: one SVG unit a pixel
  return Math.max(320, Math.round(node.clientWidth || 1000));
}

function showDwell(dwell) {
  const bins = dwell.bins;
  const slots = bins.map((bin, i) => {
    const text = bin.upper_s === null ? `> ${duration(bins[i - 1].upper_s)}` : `≤ ${duration(bin.upper_s)}`;
    return { label: text, tip: `stayed ${text}` };
  });
  const body = el("div", { class: "body" }, el("div", { class: "chart-title" }, "How long they stayed"));
  dwellCard.replaceChildren(body);
  const drawing = chart({ slots, series: [{ metric: "count", name: "Objects", type: "bar", cls: "s-dwell", values: bins.map((b) => b.count) }],
    yTitle: "objects that left", label: "dwell time histogram", width: widthOf(body) - 24, height: 260 });
  drawing.id = "dwell-chart";
  body.append(drawing);
}

async function showHeatmap(camera, parameters, mine) {
  const heat = new URLSearchParams({ from: parameters.get("from"), to: parameters.get("to") });
  if (parameters.get("label")) heat.set("label", parameters.get("label"));
  const response = await api(`/api/cameras/${encodeURIComponent(camera)}/heatmap.png?${heat}`);
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || `heatmap: ${response.status}`);
  const peakCount = Number(response.headers.get("X-Heatmap-Peak") || 0);
  const picture = await response.blob();
  if (mine !== generation) return;
  if (heatURL) URL.revokeObjectURL(heatURL);
  heatURL = URL.createObjectURL(picture);
  heatImage.src = heatURL;
  heatImage.alt = `heatmap of ${camera}`;
  heatNote.textContent = peakCount
    ? `${parameters.get("label") || "All labels"}; the busiest cell saw ${number(peakCount)} track positions.`
    : "No tracks in this range.";
}

async function load() {
  show("");
  for (const node of custom) node.classList.toggle("hidden", controls.range.value !== "custom");
  const { camera, rule } = current();
  if (!camera || !rule) {
    chartBox.replaceChildren(el("p", { class: "muted" }, camera ? "This camera has no line, zone, dwell or crowd rule." : "No cameras."));
    csv.removeAttribute("href");
    redraw = null;
    return;
  }
  remember();
  if (span().some((date) => Number.isNaN(date.getTime()))) {
    show("Choose when the range starts and ends.");
    return;
  }
  const parameters = query();
  csv.href = `/api/series.csv?${parameters}`;
  const kind = rule.kind;
  const shown = SHOWN[kind];
  const mine = ++generation;  // answers to an earlier choice that arrive late are dropped
  try {
    const [data, dwell] = await Promise.all([
      answer(`/api/series?${parameters}`),
      kind === "dwell" ? answer(`/api/dwell?${parameters}`) : null,
      showHeatmap(camera.name, parameters, mine).catch((error) => { heatNote.textContent = error.message; }),
    ]);
    if (mine !== generation) return;
    const slots = slotsOf(data.points, data.bucket_s);
    const series = shown.series.map(([metric, name, type, cls]) => ({ metric, name, type, cls, values: data.points.map((p) => p[metric]) }));
    const per = shown.perBucket === false ? "" : ` ${PER[data.bucket_s]}`;
    heading.textContent = `${rule.name} · ${data.label || (data.labels.length ? data.labels.join(" + ") : "all labels")} — ${shown.title}${per}`;
    legend.replaceChildren(...series.map((s) => el("span", {}, el("i", { class: `key ${s.cls}` }), s.name)));
    const options = { slots, series, yTitle: `${shown.title}${per}`, integer: kind !== "zone", label: heading.textContent };
    showTotals(kind, data, slots, dwell);
    dwellCard.classList.toggle("hidden", !dwell);
    redraw = () => {
      const drawing = chart({ ...options, width: widthOf(chartBox) });
      drawing.id = "series-chart";
      chartBox.replaceChildren(drawing);
      if (dwell) showDwell(dwell);
    };
    redraw();
    if (!catalog.available) show("Rules has kept no series yet: counts appear here once it runs (analytics: enabled).");
  } catch (error) {
    show(error.message);
  }
}

await start("/analytics");
catalog = await getJSON("/api/analytics/catalog");
const wanted = Object.fromEntries(new URLSearchParams(location.search));
controls.range.value = RANGES.some(([v]) => v === wanted.range) ? wanted.range : "today";
controls.bucket.value = BUCKETS.some(([v]) => v === wanted.bucket) ? wanted.bucket : "3600";
const [defaultFrom, defaultTo] = [new Date(Date.now() - 86400000), new Date()];
controls.from.value = wanted.from || localInput(defaultFrom);
controls.to.value = wanted.to || localInput(defaultTo);
choose(wanted);
for (const name of ["camera", "rule"]) {
  controls[name].addEventListener("change", () => { choose({ camera: controls.camera.value, rule: controls.rule.value, label: controls.label.value }); load(); });
}
for (const name of ["label", "range", "bucket", "from", "to"]) controls[name].addEventListener("change", load);
document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());
await load();
let resizing = null;
window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(() => redraw && redraw(), 150); });
setInterval(() => { if (["today", "7d"].includes(controls.range.value) && !document.hidden) load(); }, 60000);
