// Fleet: every site's row as its fleet service last reported it (GET /api/fleet, every few seconds): online or
// offline and since when, version, models, cameras streaming, events in the last hour, problems.
// Everything in a row came from a site over MQTT: it goes in as text (el() appends text nodes), never as
// HTML, and a site's name is a link only to an http(s) URL.
import { badge, el, getJSON, start } from "/static/common.js";

const REFRESH_MS = 3000;
const COLUMNS = ["Site", "State", "Version", "Models", "Cameras", "Events/h", "Problems"];
const main = document.getElementById("main");
const counts = el("div", { class: "stats fleet-counts", id: "counts" });
const connection = el("div", { class: "banner warn hidden", id: "connection", role: "status" });
const body = el("tbody", { id: "sites" });
const table = el("div", { class: "card fleet-card hidden", id: "table" }, el("table", { class: "fleet" },
  el("thead", {}, el("tr", {}, COLUMNS.map((h) => el("th", { class: h === "Events/h" ? "num" : null }, h)))), body));
const empty = el("div", { class: "card hidden", id: "empty" }, el("div", { class: "body" }));
const heard = el("p", { class: "muted fleet-heard", id: "heard" });
main.append(el("h1", {}, "Fleet"), counts, connection, table, empty, heard);

function safeLink(url) {  // the server checked it already; a page that trusts no one checks again
  if (typeof url !== "string") return null;
  try {
    const parsed = new URL(url);
    const web = parsed.protocol === "http:" || parsed.protocol === "https:";
    return web && parsed.hostname && !parsed.username && !parsed.password ? parsed.href : null;
  } catch {
    return null;
  }
}

function text(value) {
  return value === null || value === undefined || value === "" ? "—" : String(value);
}

function ago(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "never";
  if (seconds < 5) return "just now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 48 * 3600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function cell(label, ...children) {  // data-label: the column's name beside the value on a narrow screen
  return el("td", { "data-label": label }, ...children);
}

function siteCell(site) {
  const name = text(site.site || site.thing);
  const link = safeLink(site.console_url);
  const shown = link ? el("a", { href: link, target: "_blank", rel: "noopener noreferrer", class: "site-link" }, name)
    : el("span", { class: "site-name" }, name);
  const thing = site.thing && site.thing !== site.site ? el("div", { class: "muted detail" }, `thing ${site.thing}`) : null;
  const job = site.job ? el("div", { class: "muted detail" }, `job ${site.job}`) : null;
  return cell("Site", el("div", {}, shown, thing, job));
}

function stateCell(site) {
  const seen = typeof site.last_seen_s === "number" ? new Date(Date.now() - site.last_seen_s * 1000) : null;
  return cell("State", el("span", {}, badge(site.online ? "online" : "offline"),
    el("span", { class: "muted seen", title: seen ? seen.toLocaleString() : null }, ` ${ago(site.last_seen_s)}`)));
}

function problemsCell(problems) {
  const list = Array.isArray(problems) ? problems : [];
  if (!list.length) return cell("Problems", el("span", { class: "muted" }, "none"));
  return cell("Problems", el("ul", { class: "problems" }, list.map((problem) => el("li", {}, text(problem)))));
}

function row(site) {
  return el("tr", { "data-thing": text(site.thing), class: site.online ? "online" : "offline" },
    siteCell(site), stateCell(site), cell("Version", text(site.version)), cell("Models", text(site.models)),
    cell("Cameras", text(site.cameras)), el("td", { "data-label": "Events/h", class: "num" }, text(site.events_per_hour)),
    problemsCell(site.problems));
}

function count(key, value, label) {
  const tone = value > 0 && (key === "online" || key === "offline") ? key : null;  // green, red: only when some are
  return el("div", { "data-count": key, class: tone }, el("b", {}, String(value)), label);
}

function emptyText(answer) {
  if (!answer.enabled) {
    return [el("p", {}, "The fleet page is off for this console."),
      el("p", { class: "muted" }, "To watch every site here, set ", el("code", {}, "console.fleet: true"),
        " in this site file, with the fleet's MQTT broker under ", el("code", {}, "fleet.mqtt"), " (or ",
        el("code", {}, "uplink.mqtt"), "), and restart the console.")];
  }
  return [el("p", {}, "No site has reported yet."),
    el("p", { class: "muted" }, "A site appears here once its fleet service reports to this broker (",
      el("code", {}, text(answer.broker)), "): give its site file a ", el("code", {}, "fleet:"),
      " section with the same broker and topic root (", el("code", {}, text(answer.topic_root)),
      "), and its console's address as ", el("code", {}, "fleet.console_url"), " to link it from here; then ",
      el("code", {}, "edgesight run"), ". ", el("code", {}, "edgesight fleet status"), " shows this table in a terminal.")];
}

function show(answer) {
  const sites = Array.isArray(answer.sites) ? answer.sites : [];
  counts.replaceChildren(count("sites", sites.length, sites.length === 1 ? "site" : "sites"),
    count("online", answer.online ?? 0, "online"), count("offline", answer.offline ?? 0, "offline"));
  counts.classList.toggle("hidden", !answer.enabled);
  connection.classList.toggle("hidden", !answer.enabled || answer.connected);
  connection.textContent = answer.enabled && !answer.connected
    ? `Not connected to the fleet's broker ${text(answer.broker)}${answer.error ? `: ${answer.error}` : ""}; trying again. ` +
      "The table shows what was heard before." : "";
  body.replaceChildren(...sites.map(row));
  table.classList.toggle("hidden", !sites.length);
  empty.classList.toggle("hidden", sites.length > 0);
  empty.firstChild.replaceChildren(...(sites.length ? [] : emptyText(answer)));
  heard.textContent = answer.enabled ? `Heard on ${text(answer.broker)}, ${text(answer.topic)}; refreshed every ${REFRESH_MS / 1000} s.` : "";
}

await start("/fleet");
async function loop() {
  try {
    show(await getJSON("/api/fleet"));
  } catch (error) {
    connection.textContent = `The console did not answer: ${error.message}`;
    connection.classList.remove("hidden");
  }
  setTimeout(loop, REFRESH_MS);
}
loop();
