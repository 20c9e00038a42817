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
// the bounds actually shown (a preset's, widened to whole buckets as the API widens them); editing one is a custom range
const custom = [el("label", {}, "From", controls.from), el("label", {}, "To", controls.to)];
const zoneNote = el("div", { class: "muted range-note", id: "range-note" });
const notices = el("div", { id: "notices" });  // what the URL asked for and could not be shown, the site file's switch
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
  zoneNote,
  notices,
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

function notice(id, message) {  // a standing note (not an error): the same id replaces the earlier one
  const old = document.getElementById(id);
  if (old) old.remove();
  if (message) notices.append(el("div", { id, class: "banner warn" }, message));
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

function zoneText() {  // the browser's time zone, as the page says it reads times
  const minutes = -new Date().getTimezoneOffset();
  const sign = minutes < 0 ? "−" : "+";
  const hours = Math.floor(Math.abs(minutes) / 60), rest = Math.abs(minutes) % 60;
  const offset = minutes ? `UTC${sign}${hours}${rest ? `:${String(rest).padStart(2, "0")}` : ""}` : "UTC";
  const name = Intl.DateTimeFormat().resolvedOptions().timeZone;
  return `Times are in your browser's time zone (${name && name !== "UTC" ? `${name}, ` : ""}${offset}); Day buckets are UTC days.`;
}

// [from, to] of the chosen range: days are the browser's days (buckets themselves are UTC aligned);
// "Last 7 days" is seven whole buckets back from the end of the current one (seven days, not eight)
function span() {
  const now = new Date();
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  const bucket = Number(controls.bucket.value) * 1000;
  switch (controls.range.value) {
    case "yesterday": return [new Date(midnight.getTime() - 86400000), midnight];
    case "7d": {
      const end = Math.ceil(now.getTime() / bucket) * bucket;
      return [new Date(end - 7 * 86400000), new Date(end)];
    }
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

function widthOf(node) {  // the chart's width in pixels: one SVG unit a pixel (it scales down below 280)
  return Math.max(280, Math.round(node.clientWidth || 1000));
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
    yTitle: "objects that left", label: "dwell time histogram", width: widthOf(dwellCard) - 24, height: 280, everyLabel: true });
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
  if (controls.range.value !== "custom") [controls.from.value, controls.to.value] = span().map(localInput);
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
    controls.from.value = localInput(new Date(data.from));  // the bounds the chart and the CSV cover
    controls.to.value = localInput(new Date(data.to));
    const slots = slotsOf(data.points, data.bucket_s);
    const series = shown.series.map(([metric, name, type, cls]) => ({ metric, name, type, cls, values: data.points.map((p) => p[metric]) }));
    const per = shown.perBucket === false ? "" : ` ${PER[data.bucket_s]}`;
    heading.textContent = `${rule.name} · ${data.label || "all labels"} — ${shown.title}${per}`;
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
    if (!catalog.available && catalog.recording !== false) show("Rules has kept no series yet: counts appear here once it runs (analytics: enabled).");
  } catch (error) {
    show(error.message);
  }
}

// range, bucket and times from the URL; what cannot be read is said, not silently replaced
function wantedChoices(wanted) {
  const problems = [];
  const range = wanted.range || (wanted.from || wanted.to ? "custom" : "today");
  controls.range.value = RANGES.some(([v]) => v === range) ? range : "today";
  if (controls.range.value !== range) problems.push(`range ${JSON.stringify(range)} is not one of ${RANGES.map(([, t]) => t).join(", ")}`);
  controls.bucket.value = BUCKETS.some(([v]) => v === wanted.bucket) ? wanted.bucket : "3600";
  if (wanted.bucket && controls.bucket.value !== wanted.bucket) problems.push(`bucket ${JSON.stringify(wanted.bucket)} is not one of 900, 3600, 86400 (seconds)`);
  if (controls.range.value === "custom") {
    const times = ["from", "to"].map((key) => [key, wanted[key] || "", new Date(wanted[key] || "")]);
    const bad = times.filter(([, , date]) => Number.isNaN(date.getTime()));
    if (bad.length) problems.push(bad.map(([key, text]) => `${key} ${JSON.stringify(text)}`).join(" and ") + " is not a time");
    else if (times[0][2] >= times[1][2]) problems.push(`from ${JSON.stringify(wanted.from)} is not before to ${JSON.stringify(wanted.to)}`);
    if (bad.length || times[0][2] >= times[1][2]) controls.range.value = "today";
    else { controls.from.value = localInput(times[0][2]); controls.to.value = localInput(times[1][2]); }
  }
  return problems;
}

function wantedFound(wanted, problems) {  // after choose(): the camera, rule and label asked for, if they were not there
  const { camera, rule } = current();
  if (wanted.camera && controls.camera.value !== wanted.camera) problems.push(`camera ${JSON.stringify(wanted.camera)} was not found`);
  else if (wanted.rule && controls.rule.value !== wanted.rule) {
    problems.push(`rule ${JSON.stringify(wanted.rule)} was not found on camera ${camera ? camera.name : ""} (or keeps no series)`);
  } else if (wanted.label && controls.label.value !== wanted.label) {
    problems.push(`label ${JSON.stringify(wanted.label)} was not found for rule ${rule ? rule.name : ""}`);
  }
  if (!problems.length) return;
  const instead = [camera && `camera ${camera.name}`, rule && `rule ${rule.name}`, rule && (controls.label.value || "all labels"),
    RANGES.find(([v]) => v === controls.range.value)[1].toLowerCase()].filter(Boolean).join(", ");
  notice("url-notice", `The link asked for what is not here: ${problems.join("; ")}. Showing ${instead} instead.`);
}

await start("/analytics");
catalog = await getJSON("/api/analytics/catalog");
zoneNote.textContent = zoneText();
if (catalog.recording === false) {
  notice("not-recording", "Counts over time are switched off in the site file (analytics.enabled): what you see is history up to then.");
}
const wanted = Object.fromEntries(new URLSearchParams(location.search));
const problems = wantedChoices(wanted);
choose(wanted);
wantedFound(wanted, problems);
for (const name of ["camera", "rule"]) {
  controls[name].addEventListener("change", () => { choose({ camera: controls.camera.value, rule: controls.rule.value, label: controls.label.value }); notice("url-notice"); load(); });
}
for (const name of ["label", "range", "bucket"]) controls[name].addEventListener("change", () => { notice("url-notice"); load(); });
for (const name of ["from", "to"]) {  // a bound edited by hand: a custom range from then on
  controls[name].addEventListener("change", () => { controls.range.value = "custom"; notice("url-notice"); load(); });
}
document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());
await load();
let resizing = null;
window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(() => redraw && redraw(), 150); });
setInterval(() => { if (["today", "7d"].includes(controls.range.value) && !document.hidden) load(); }, 60000);
