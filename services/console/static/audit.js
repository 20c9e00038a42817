// The audit trail: who installed, loaded or rolled back which model, who changed rules, who logged in.
// Newest first; the uplink sends every record upstream as an `audit` event as well.
import { el, fromNs, getJSON, start } from "/static/common.js";

const main = document.getElementById("main");
const kinds = [["", "everything"], ["model.", "models"], ["config.", "configuration"], ["rules.", "rule reloads"], ["console.", "logins"]];
const filter = el("select", { id: "action" }, kinds.map(([value, text]) => el("option", { value }, text)));
const body = el("tbody", { id: "trail" });
const empty = el("p", { class: "muted hidden", id: "empty" }, "No records yet.");
main.append(el("h1", {}, "Audit trail"),
  el("form", { class: "filters" }, el("label", {}, "Show", filter)),
  el("div", { class: "card" }, el("table", { class: "events" },
    el("thead", {}, el("tr", {}, ["Time", "Action", "Target", "Who", "Details"].map((h) => el("th", {}, h)))), body)),
  empty);

function details(record) {
  const summary = Object.entries(record.detail || {})
    .filter(([, value]) => value !== "")
    .map(([key, value]) => `${key}: ${key === "sha256" ? String(value).slice(0, 12) : value}`)
    .join(" · ");
  if (!record.changes || !record.changes.length) return summary;
  // a rule save's key-level diff: old → new (secrets masked by the server)
  const shown = (value) => (value === null || value === undefined ? "—" : JSON.stringify(value));
  return el("div", {}, summary, el("ul", { class: "changes" },
    record.changes.map((c) => el("li", {}, `${c.key}: ${shown(c.old)} → ${shown(c.new)}`))));
}

async function load() {
  const answer = await getJSON(`/api/audit?limit=200&action=${encodeURIComponent(filter.value)}`);
  body.replaceChildren(...answer.records.map((r) => el("tr", { "data-action": r.action },
    el("td", {}, fromNs(r.ts_ns)), el("td", {}, r.action), el("td", {}, r.target), el("td", {}, r.actor),
    el("td", { class: "muted" }, details(r)))));
  empty.classList.toggle("hidden", body.children.length > 0);
}

filter.addEventListener("change", load);
await start("/audit");
await load();
setInterval(load, 5000);
