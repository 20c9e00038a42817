// The event timeline: newest first, filtered by camera, rule, type and time, paged; a detail view
// with the snapshot and the object's box before (dashed) and after (solid). Each event has its own
// URL, /events/<id>: the timeline opened at that event.
import { api, el, fromNs, getJSON, start } from "/static/common.js";

const main = document.getElementById("main");
const params = new URLSearchParams(location.search);
const select = (id, label) => el("label", {}, label, el("select", { id, name: id }, el("option", { value: "" }, "all")));
const form = el("form", { class: "filters", id: "filters" },
  select("camera", "Camera"), select("rule", "Rule"), select("type", "Type"),
  el("label", {}, "Since", el("input", { type: "datetime-local", id: "since", name: "since" })),
  el("label", {}, "Until", el("input", { type: "datetime-local", id: "until", name: "until" })),
  el("button", { type: "submit", class: "primary" }, "Apply"));
const body = el("tbody", { id: "timeline" });
const more = el("button", { id: "more", class: "hidden" }, "Older events");
const empty = el("p", { class: "muted hidden", id: "empty" }, "No events match.");
const dialog = el("dialog", { id: "detail" });
main.append(el("h1", {}, "Events"), form,
  el("div", { class: "card" }, el("table", { class: "events" },
    el("thead", {}, el("tr", {}, ["", "Time", "Camera", "Rule", "Type", "Object", "Details"].map((h) => el("th", {}, h)))), body)),
  empty, el("p", {}, more), dialog);
let next = null;

function query(cursor) {
  const q = new URLSearchParams();
  for (const key of ["camera", "rule", "type"]) if (form.elements[key].value) q.set(key, form.elements[key].value);
  for (const key of ["since", "until"]) {
    const value = form.elements[key].value;  // local time in the browser: sent as an absolute time
    if (value) q.set(key, new Date(value).toISOString());
  }
  q.set("limit", "25");
  if (cursor) q.set("before", cursor);
  return q;
}

const REPORT = "count_report";  // rules' interval report: figures over an interval, no object, no snapshot
const isReport = (e) => e.event_type === REPORT;

function reportFigures(e) {  // a report's figures, [name, value], as rules named them (label_figure)
  return Object.entries(e.attributes || {}).filter(([key]) => !["kind", "interval_s"].includes(key));
}

function reportInterval(e) {
  const minutes = Math.round((e.end_ns - e.start_ns) / 6e10);
  return `${minutes >= 60 && minutes % 60 === 0 ? `${minutes / 60} h` : `${minutes} min`} from ${fromNs(e.start_ns)}`;
}

// the interval on the Analytics page: 15-minute buckets while minute rows are kept (a week), hours after
function analyticsPath(e) {
  const iso = (ns) => new Date(Number(ns) / 1e6).toISOString().replace(/\.\d{3}Z$/, "Z");
  const recent = Date.now() - Number(e.end_ns) / 1e6 < 6 * 86400000;
  const seconds = (e.end_ns - e.start_ns) / 1e9;
  const bucket = seconds >= 86400 ? "86400" : recent && seconds < 86400 ? "900" : "3600";
  const q = new URLSearchParams({ camera: e.camera, rule: e.rule, range: "custom", from: iso(e.start_ns), to: iso(e.end_ns), bucket });
  return `/analytics?${q}`;
}

function describe(e) {
  const a = e.attributes || {};
  if (isReport(e)) {
    const figures = reportFigures(e).map(([key, value]) => `${key} ${value}`);
    return [`${a.kind || ""} report`, ...figures].join(" · ");
  }
  const parts = [];
  if (e.lifecycle !== "new") parts.push(e.lifecycle);
  if (a.direction) parts.push(`crossed ${a.direction}`);
  if (a.zone) parts.push(`zone ${a.zone}`);
  if (a.dwell_s !== undefined) parts.push(`${a.dwell_s} s`);
  const counts = Object.entries(e.counts || {}).map(([key, n]) => `${key} ${n}`);
  if (counts.length) parts.push(`counts: ${counts.join(", ")}`);
  return parts.join(" · ");
}

const eventPath = (id) => `/events/${encodeURIComponent(id)}`;
const listPath = () => `/events${location.search}`;

function row(e) {
  // no snapshot: say so in words, not with an empty box that looks like a picture still loading
  const thumb = isReport(e) ? el("span", { class: "nothumb" }, "report") : e.snapshot_url ? el("img", { class: "thumb", src: e.snapshot_url, alt: "snapshot", loading: "lazy" }) : el("span", { class: "nothumb" }, "no snapshot");
  const object = e.object ? `${e.object.label} #${e.object.track_id}` : "—";
  // a real link, so the event's URL can be copied or opened in a new tab; a plain click opens it here
  const link = el("a", { href: eventPath(e.id), class: "permalink",
    onclick: (event) => { if (!event.ctrlKey && !event.metaKey && !event.shiftKey && event.button === 0) event.preventDefault(); else event.stopPropagation(); } },
  fromNs(e.ts_ns));
  return el("tr", { "data-id": e.id, "data-type": e.event_type, onclick: () => show(e) },
    el("td", {}, thumb), el("td", {}, link), el("td", {}, e.camera), el("td", {}, e.rule),
    el("td", {}, e.event_type), el("td", {}, object), el("td", { class: "muted" }, describe(e)));
}

async function load(append) {
  const answer = await getJSON(`/api/events?${query(append ? next : null)}`);
  if (!append) body.replaceChildren();
  body.append(...answer.events.map(row));
  next = answer.next;
  more.classList.toggle("hidden", !next);
  empty.classList.toggle("hidden", body.children.length > 0);
}

function box(b, dashed) {
  const svgNS = "http://www.w3.org/2000/svg";
  const rect = document.createElementNS(svgNS, "rect");
  rect.setAttribute("x", b[0]); rect.setAttribute("y", b[1]);
  rect.setAttribute("width", b[2] - b[0]); rect.setAttribute("height", b[3] - b[1]);
  rect.setAttribute("fill", "none");
  rect.setAttribute("stroke", dashed ? "#ffb43c" : "#3fb950");
  rect.setAttribute("stroke-width", "3");
  rect.setAttribute("vector-effect", "non-scaling-stroke");
  if (dashed) rect.setAttribute("stroke-dasharray", "6 4");
  return rect;
}

function showReport(e) {  // a report: its figures and the interval on the Analytics page; nothing was seen
  const figures = reportFigures(e);
  return [
    el("h2", {}, `Figures (${e.attributes && e.attributes.kind ? `${e.attributes.kind} rule, ` : ""}${reportInterval(e)})`),
    figures.length
      ? el("table", { id: "report-figures" }, el("tbody", {}, figures.map(([key, value]) => el("tr", {}, el("td", {}, key), el("td", { class: "num" }, String(value))))))
      : el("p", { class: "muted" }, "Nothing was counted in this interval."),
    el("p", {}, el("a", { href: analyticsPath(e), id: "report-analytics" }, "This interval on the Analytics page")),
  ];
}

function show(e, push = true) {
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", "0 0 1 1");
  svg.setAttribute("preserveAspectRatio", "none");
  if (e.before) svg.append(box(e.before.box, true));
  if (e.object) svg.append(box(e.object.box, false));
  const figure = e.snapshot_url
    ? el("div", { class: "figure" }, el("img", { src: e.snapshot_url, alt: "event snapshot", id: "snapshot" }), svg)
    : el("p", { class: "muted" }, "No snapshot: the rule has snapshot: false.");
  const side = (title, o) => el("div", {}, el("h2", {}, title),
    o ? el("div", {}, `${o.label} #${o.track_id}, score ${o.score.toFixed(2)}`, el("br"), el("span", { class: "muted" }, `box ${o.box.map((v) => v.toFixed(3)).join(", ")}`))
      : el("div", { class: "muted" }, "—"));
  const copy = { ...e };
  delete copy.snapshot_url;
  dialog.replaceChildren(
    el("h1", {}, `${e.event_type} · ${e.camera} · ${e.rule}`),
    el("p", { class: "muted" }, `${fromNs(e.ts_ns)} · ${describe(e)} · id ${e.id} · `,
      el("a", { href: eventPath(e.id), id: "permalink" }, "link to this event")),
    ...(isReport(e) ? showReport(e) : [figure, el("div", { class: "two" }, side("Before (dashed)", e.before), side("After (solid)", e.object))]),
    el("h2", {}, "As on the bus"), el("pre", {}, JSON.stringify(copy, null, 2)),
    el("form", { method: "dialog" }, el("button", { id: "close" }, "Close")));
  if (push && location.pathname !== eventPath(e.id)) history.pushState({ event: e.id }, "", `${eventPath(e.id)}${location.search}`);
  if (!dialog.open) dialog.showModal();
}

async function openFromUrl() {
  const match = location.pathname.match(/^\/events\/(.+)$/);
  if (!match) {
    if (dialog.open) dialog.close();
    return;
  }
  const response = await api(`/api/events/${match[1]}`);
  if (response.ok) {
    show(await response.json(), false);
    return;
  }
  dialog.replaceChildren(el("h1", {}, "No such event"),
    el("p", { class: "muted" }, "It was pruned, or the console never saw it."),
    el("form", { method: "dialog" }, el("button", { id: "close" }, "Close")));
  dialog.showModal();
}

// closing the detail goes back to the timeline's own URL; Back and Forward open and close it
dialog.addEventListener("close", () => { if (location.pathname !== "/events") history.pushState(null, "", listPath()); });
addEventListener("popstate", openFromUrl);

async function fillFacets() {
  const facets = await getJSON("/api/events/facets");
  for (const [key, column] of [["camera", "camera"], ["rule", "rule"], ["type", "event_type"]]) {
    const field = form.elements[key];
    for (const value of facets[column]) field.append(el("option", { value }, value));
    if (params.get(key)) {
      if (![...field.options].some((o) => o.value === params.get(key))) field.append(el("option", { value: params.get(key) }, params.get(key)));
      field.value = params.get(key);
    }
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = query(null);
  q.delete("limit");
  history.replaceState(null, "", `/events?${q}`);
  load(false);
});
more.addEventListener("click", () => load(true));

await start("/events");
await fillFacets();
await load(false);
await openFromUrl();
setInterval(() => { if (!dialog.open && !form.elements.until.value && body.children.length <= 25) load(false); }, 3000);
