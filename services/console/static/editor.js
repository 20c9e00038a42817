// The rule editor: on a frozen frame, draw or drag lines (with their in-side) and zone polygons, set
// classes, save. The server validates the whole site file as `edgesight config check` does, writes it
// keeping its comments, and has rules apply it without a restart.
import { api, cameraName, el, getJSON, start } from "/static/common.js";

const svgNS = "http://www.w3.org/2000/svg";
const name = cameraName();
document.title = `Rules of ${name} · EdgeSight`;
const main = document.getElementById("main");
const banner = el("div", { class: "banner hidden", id: "banner" });
const image = el("img", { id: "frame", alt: `frozen frame of ${name}` });
const svg = document.createElementNS(svgNS, "svg");
svg.id = "stage";
const stage = el("div", { class: "editor-stage" }, image, svg);
const list = el("ul", { class: "rule-list", id: "rules" });
const properties = el("div", { class: "form", id: "properties" });
const tools = {};
const tool = (id, text) => (tools[id] = el("button", { id: `tool-${id}`, onclick: () => setTool(id) }, text));
main.append(
  el("h1", {}, `Rules of `, el("a", { href: `/cameras/${encodeURIComponent(name)}` }, name)),
  banner,
  el("div", { class: "two" },
    el("div", {},
      el("div", { class: "toolbar" }, tool("select", "Select / drag"), tool("line", "Draw line"), tool("zone", "Draw zone"),
        el("button", { id: "refreeze", onclick: () => freeze() }, "New frame"),
        el("button", { id: "save", class: "primary", onclick: () => save() }, "Save")),
      stage,
      el("p", { class: "muted" }, "Line: press, drag, release. Zone: click each corner; double-click (or click the first corner) to close. ",
        "Select: drag a corner; the arrow points to the line's in-side.")),
    el("div", {}, el("h2", {}, "Rules"), el("div", { class: "card" }, el("div", { class: "body" }, list)),
      el("h2", {}, "Selected"), el("div", { class: "card" }, el("div", { class: "body" }, properties)))),
);

let raw = {};        // the rules as written in the file (what is sent back, changed where edited)
let shapes = [];     // {name, original, type, points: [[x, y]...] (0-1), in_side, classes}
let selected = null;
let mode = "select";
let drawing = null;  // the shape being drawn
let dragging = null; // {shape, index}
let errors = [];
let labels = [];
let width = 1, height = 1;

function isPoints(value, count) {
  return Array.isArray(value) && value.length >= count && value.every((p) => Array.isArray(p) && p.length === 2 && p.every((v) => typeof v === "number"));
}

function load(rules) {
  raw = rules;
  shapes = [];
  for (const [ruleName, rule] of Object.entries(rules)) {
    if (rule.type === "line" && isPoints(rule.line, 2)) {
      shapes.push({ name: ruleName, original: ruleName, type: "line", points: rule.line.map((p) => [...p]), in_side: rule.in_side || "right", classes: rule.classes || [] });
    } else if (rule.type === "zone" && isPoints(rule.polygon, 3)) {
      shapes.push({ name: ruleName, original: ruleName, type: "zone", points: rule.polygon.map((p) => [...p]), classes: rule.classes || [] });
    }
  }
}

function setTool(id) {
  mode = id;
  drawing = null;
  for (const [key, button] of Object.entries(tools)) button.classList.toggle("active", key === id);
  svg.classList.toggle("select", id === "select");
  render();
}

function point(event) {
  const r = svg.getBoundingClientRect();
  const x = Math.min(1, Math.max(0, (event.clientX - r.left) / r.width));
  const y = Math.min(1, Math.max(0, (event.clientY - r.top) / r.height));
  return [Math.round(x * 10000) / 10000, Math.round(y * 10000) / 10000];
}

function node(tag, attributes) {
  const n = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attributes)) n.setAttribute(k, v);
  return n;
}

const px = (p) => [p[0] * width, p[1] * height];

function render() {
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  for (const shape of [...shapes, ...(drawing ? [drawing] : [])]) {
    const pts = shape.points.map(px);
    const cls = `shape shape-${shape.type}${shape === selected ? " selected" : ""}`;
    let body;
    if (shape.type === "line" && pts.length === 2) {
      body = node("line", { x1: pts[0][0], y1: pts[0][1], x2: pts[1][0], y2: pts[1][1], class: cls, "data-rule": shape.name });
      svg.append(body);
      const [mx, my] = [(pts[0][0] + pts[1][0]) / 2, (pts[0][1] + pts[1][1]) / 2];
      const [dx, dy] = [pts[1][0] - pts[0][0], pts[1][1] - pts[0][1]];
      const length = Math.hypot(dx, dy) || 1;
      const sign = shape.in_side === "left" ? -1 : 1;  // right of first->second point, y down
      const [tx, ty] = [mx - sign * dy / length * 40, my + sign * dx / length * 40];
      svg.append(node("path", { d: `M${mx},${my} L${tx},${ty}`, class: "arrow" }));
      svg.append(node("circle", { cx: tx, cy: ty, r: 5, fill: "#00c8ff" }));
      const text = node("text", { x: pts[0][0] + 6, y: pts[0][1] - 8, class: "shape-label" });
      text.textContent = `${shape.name} (in →)`;
      svg.append(text);
    } else {
      const isOpen = shape === drawing;
      body = node(isOpen ? "polyline" : "polygon", { points: pts.map((p) => p.join(",")).join(" "), class: cls, "data-rule": shape.name });
      svg.append(body);
      if (pts.length) {
        const text = node("text", { x: pts[0][0] + 6, y: pts[0][1] - 8, class: "shape-label" });
        text.textContent = shape.name;
        svg.append(text);
      }
    }
    body.addEventListener("mousedown", (event) => {
      if (mode !== "select") return;
      event.stopPropagation();
      select(shape);
    });
    if (shape === selected || shape === drawing) {
      pts.forEach((p, index) => {
        const handle = node("circle", { cx: p[0], cy: p[1], r: 8, class: "handle", "data-index": index });
        handle.addEventListener("mousedown", (event) => {
          if (mode !== "select") return;
          event.stopPropagation();
          dragging = { shape, index };
        });
        svg.append(handle);
      });
    }
  }
  renderList();
}

function uniqueName(prefix) {
  const taken = new Set([...Object.keys(raw), ...shapes.map((s) => s.name)]);
  let n = 1;
  while (taken.has(`${prefix}_${n}`)) n += 1;
  return `${prefix}_${n}`;
}

svg.addEventListener("mousedown", (event) => {
  if (mode === "line") {
    const p = point(event);
    drawing = { name: uniqueName("line"), original: null, type: "line", points: [p, p], in_side: "right", classes: [] };
    render();
  } else if (mode === "zone") {
    const p = point(event);
    if (!drawing) drawing = { name: uniqueName("zone"), original: null, type: "zone", points: [], classes: [] };
    const first = drawing.points[0];
    if (first && drawing.points.length >= 3 && Math.hypot((first[0] - p[0]) * width, (first[1] - p[1]) * height) < 12) {
      finishZone();
      return;
    }
    drawing.points.push(p);
    render();
  } else {
    select(null);
  }
});

svg.addEventListener("mousemove", (event) => {
  if (mode === "line" && drawing && event.buttons) {
    drawing.points[1] = point(event);
    render();
  } else if (dragging) {
    dragging.shape.points[dragging.index] = point(event);
    render();
  }
});

window.addEventListener("mouseup", (event) => {
  if (mode === "line" && drawing) {
    drawing.points[1] = point(event);
    const [a, b] = drawing.points.map(px);
    if (Math.hypot(a[0] - b[0], a[1] - b[1]) >= 10) {
      shapes.push(drawing);
      const drawn = drawing;
      drawing = null;
      setTool("select");
      select(drawn);
    } else {
      drawing = null;
      render();
    }
  }
  dragging = null;
});

svg.addEventListener("dblclick", () => { if (mode === "zone") finishZone(); });

function finishZone() {
  if (!drawing) return;
  // a double-click adds its point twice: drop repeats
  drawing.points = drawing.points.filter((p, i, all) => i === 0 || p[0] !== all[i - 1][0] || p[1] !== all[i - 1][1]);
  if (drawing.points.length >= 3) {
    shapes.push(drawing);
    const drawn = drawing;
    drawing = null;
    setTool("select");
    select(drawn);
  }
}

function select(shape) {
  selected = shape;
  render();
  properties.replaceChildren();
  if (!shape) {
    properties.append(el("span", { class: "muted" }, "Nothing selected."));
    return;
  }
  const field = (label, input) => el("label", {}, label, input);
  const nameInput = el("input", { id: "rule-name", value: shape.name });
  nameInput.addEventListener("input", () => { shape.name = nameInput.value.trim(); render(); });
  const classes = el("input", { id: "rule-classes", value: shape.classes.join(", "), placeholder: "all classes", list: "labels" });
  classes.addEventListener("input", () => { shape.classes = classes.value.split(",").map((c) => c.trim()).filter(Boolean); });
  properties.append(field("Name", nameInput), field(`Classes (comma-separated; seen: ${labels.join(", ") || "none yet"})`, classes));
  if (shape.type === "line") {
    const side = el("select", { id: "rule-in-side" }, el("option", { value: "right" }, "right of first → second point"), el("option", { value: "left" }, "left of first → second point"));
    side.value = shape.in_side;
    side.addEventListener("change", () => { shape.in_side = side.value; render(); });
    properties.append(field("In-side (the arrow)", side));
  }
  const actions = (raw[shape.original] || {}).actions || [];
  if (actions.length) {
    // What runs or sends is set in the site file only (the server refuses changes): shown, not editable.
    properties.append(el("div", { class: "muted", id: "rule-actions" }, "Actions (set in the site file, read-only):",
      el("ul", {}, actions.map((a) => el("li", {}, describeAction(a))))));
  }
  properties.append(el("button", { class: "danger", id: "rule-delete", onclick: () => { shapes = shapes.filter((s) => s !== shape); select(null); } }, "Delete"));
}

function describeAction(action) {
  if (action.type === "webhook") return `webhook → ${String(action.url).split("?")[0]}`;
  if (action.type === "gpio") return `gpio line ${action.line} on ${action.chip || "/dev/gpiochip0"}`;
  if (action.type === "command") return `command ${(action.argv || [])[0] || ""}`;
  return String(action.type);
}

function renderList() {
  const geometric = new Set(shapes.map((s) => s.original).filter(Boolean));
  const items = shapes.map((shape) => {
    const mine = errors.filter((e) => e.rule === shape.name || (shape.original && e.rule === shape.original));
    return el("li", { class: shape === selected ? "selected" : "", "data-rule": shape.name, onclick: () => { setTool("select"); select(shape); } },
      `${shape.name} `, el("span", { class: "muted" }, shape.type), ...mine.map((e) => el("div", { class: "error" }, `${e.key}: ${e.message}`)));
  });
  for (const [ruleName, rule] of Object.entries(raw)) {
    if (!geometric.has(ruleName) && !shapes.some((s) => s.name === ruleName)) {
      items.push(el("li", {}, `${ruleName} `, el("span", { class: "muted" }, `${rule.type} (kept as written)`)));
    }
  }
  list.replaceChildren(...items);
}

function rulesToSave() {
  const out = {};
  const edited = new Map(shapes.filter((s) => s.original).map((s) => [s.original, s]));
  for (const [ruleName, rule] of Object.entries(raw)) {  // in the file's order
    const shape = edited.get(ruleName);
    if (!shape) {
      if (rule.type !== "line" && rule.type !== "zone") out[ruleName] = rule;  // dwell, crowd...: untouched
      else if (!isPoints(rule.line || rule.polygon, 2)) out[ruleName] = rule;  // geometry not drawable here
      continue;  // a deleted line or zone
    }
    out[shape.name] = merge(rule, shape);
  }
  for (const shape of shapes.filter((s) => !s.original)) out[shape.name] = merge({ type: shape.type }, shape);
  return out;
}

function merge(rule, shape) {
  const copy = { ...rule };
  if (shape.type === "line") { copy.line = shape.points; copy.in_side = shape.in_side; } else copy.polygon = shape.points;
  if (shape.classes.length) copy.classes = shape.classes; else delete copy.classes;
  return copy;
}

function say(kind, text, details = []) {
  banner.className = `banner ${kind}`;
  banner.replaceChildren(el("div", {}, text), details.length ? el("ul", { class: "errors" }, details.map((d) => el("li", {}, d))) : "");
}

async function save() {
  const response = await api(`/api/cameras/${encodeURIComponent(name)}/rules`, { method: "PUT", body: { rules: rulesToSave() } });
  const answer = await response.json().catch(() => ({}));
  if (response.ok) {
    errors = [];
    load(answer.rules);
    selected = null;
    render();
    say("ok", "Saved to the site file; rules applied the change without a restart.");
    return;
  }
  errors = (answer.errors || []).map((e) => ({ ...e, rule: (e.key.match(/^cameras\.[^.]+\.rules\.([^.[]+)/) || [])[1] }));
  renderList();
  say("bad", answer.error || `Not saved (${response.status})`, errors.map((e) => `${e.key}${e.line ? ` (line ${e.line})` : ""}: ${e.message}`));
}

async function freeze() {
  const response = await api(`/api/cameras/${encodeURIComponent(name)}/latest.jpg?t=${Date.now()}`);
  if (!response.ok) {
    say("bad", "No frame from this camera yet: is it streaming? Try “New frame” again.");
    return;
  }
  const blob = await response.blob();
  image.onload = () => { width = image.naturalWidth; height = image.naturalHeight; render(); };
  image.src = URL.createObjectURL(blob);
}

await start("");
const [answer, cameras] = await Promise.all([getJSON(`/api/cameras/${encodeURIComponent(name)}/rules`), getJSON("/api/cameras")]);
labels = (cameras.find((c) => c.name === name) || {}).labels || [];
main.append(el("datalist", { id: "labels" }, labels.map((l) => el("option", { value: l }))));
load(answer.rules);
setTool("select");
select(null);
await freeze();
