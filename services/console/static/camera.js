// A camera: the live view (tracks, lines and zones drawn by the console), its counts and zones.
import { badge, cameraName, el, getJSON, start, when } from "/static/common.js";

const name = cameraName();
document.title = `${name} · EdgeSight`;
const main = document.getElementById("main");
const state = el("span", {});
const facts = el("div", { class: "muted" });
const linesBody = el("tbody", { id: "lines" });
const zonesBody = el("tbody", { id: "zones" });
main.append(
  el("h1", {}, name, " ", state),
  el("div", { class: "two" },
    el("div", { class: "card live" }, el("img", { id: "live", alt: `live view of ${name}`, src: `/api/cameras/${encodeURIComponent(name)}/live.mjpg` })),
    el("div", {},
      el("div", { class: "card" }, el("div", { class: "body" }, facts,
        el("p", {}, el("a", { href: `/cameras/${encodeURIComponent(name)}/editor`, id: "edit" }, "Edit lines and zones"), " · ",
          el("a", { href: `/events?camera=${encodeURIComponent(name)}` }, "Events of this camera"), " · ",
          el("a", { href: `/analytics?camera=${encodeURIComponent(name)}`, id: "analytics" }, "Counts over time")))),
      el("h2", {}, "Line counts"),
      el("div", { class: "card" }, el("table", {}, el("thead", {}, el("tr", {},
        el("th", {}, "Line"), el("th", {}, "Label"), el("th", { class: "num" }, "In"), el("th", { class: "num" }, "Out"))), linesBody)),
      el("h2", {}, "Zones now"),
      el("div", { class: "card" }, el("table", {}, el("thead", {}, el("tr", {},
        el("th", {}, "Zone"), el("th", {}, "Label"), el("th", { class: "num" }, "Objects"))), zonesBody)))),
);

await start("");
async function refresh() {
  try {
    const [cameras, counts] = await Promise.all([getJSON("/api/cameras"), getJSON("/api/counts")]);
    const camera = cameras.find((c) => c.name === name);
    if (camera) {
      state.replaceChildren(badge(camera.state));
      facts.textContent = `${camera.fps.toFixed(1)} fps · ${camera.width}×${camera.height} ${camera.codec} · since ${when(camera.since)} · ${camera.reconnects} reconnects · ${camera.source}`;
    }
    const mine = counts[name] || { lines: {}, zones: {} };
    const lineRows = [];
    for (const [rule, byLabel] of Object.entries(mine.lines)) {
      const entries = Object.entries(byLabel);
      if (!entries.length) lineRows.push(el("tr", { "data-rule": rule }, el("td", {}, rule), el("td", { class: "muted" }, "—"), el("td", { class: "num" }, 0), el("td", { class: "num" }, 0)));
      for (const [label, c] of entries) {
        lineRows.push(el("tr", { "data-rule": rule }, el("td", {}, rule), el("td", {}, label), el("td", { class: "num" }, c.in), el("td", { class: "num" }, c.out)));
      }
    }
    linesBody.replaceChildren(...lineRows);
    const zoneRows = [];
    for (const [zone, byLabel] of Object.entries(mine.zones)) {
      const entries = Object.entries(byLabel);
      if (!entries.length) zoneRows.push(el("tr", {}, el("td", {}, zone), el("td", { class: "muted" }, "—"), el("td", { class: "num" }, 0)));
      for (const [label, n] of entries) zoneRows.push(el("tr", {}, el("td", {}, zone), el("td", {}, label), el("td", { class: "num" }, n)));
    }
    zonesBody.replaceChildren(...zoneRows);
  } finally {
    setTimeout(refresh, 1000);
  }
}
refresh();
