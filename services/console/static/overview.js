// Overview: a tile per camera (newest frame ~1/s, state, fps), each service's health, the uplink.
import { badge, el, getJSON, start } from "/static/common.js";

const main = document.getElementById("main");
const grid = el("div", { class: "grid", id: "cameras" });
const servicesBody = el("tbody", { id: "services" });
const uplink = el("div", { class: "stats", id: "uplink" });
main.append(
  el("h1", {}, "Cameras"), grid,
  el("h2", {}, "Uplink"), el("div", { class: "card" }, el("div", { class: "body" }, uplink)),
  el("h2", {}, "Services"),
  el("div", { class: "card" }, el("table", {},
    el("thead", {}, el("tr", {}, ["Service", "Instance", "State", "Uptime", "Last heard"].map((h) => el("th", {}, h)))),
    servicesBody)),
);
const tiles = new Map();

function tile(camera) {
  const image = el("img", { alt: `newest frame of ${camera.name}`, class: "frame" });
  const state = el("span", {});
  const fps = el("span", { class: "muted" });
  const error = el("div", { class: "muted" });
  const node = el("div", { class: "card tile", "data-camera": camera.name },
    el("a", { href: `/cameras/${encodeURIComponent(camera.name)}` }, image),
    el("div", { class: "body" },
      el("div", { class: "title" }, el("a", { href: `/cameras/${encodeURIComponent(camera.name)}` }, camera.name), state),
      el("div", { class: "muted" }, fps, " · ", camera.source),
      error));
  grid.append(node);
  return { node, image, state, fps, error, loading: false };
}

function refreshImage(entry, camera) {
  if (entry.loading || camera.state === "disabled") return;
  entry.loading = true;
  const next = new Image();  // loaded off screen, swapped in: no flicker, no broken-image icon
  next.onload = () => { entry.image.src = next.src; entry.loading = false; };
  next.onerror = () => { entry.loading = false; };
  next.src = `${camera.latest}?overlay=1&t=${Date.now()}`;
}

async function refreshCameras() {
  const cameras = await getJSON("/api/cameras");
  for (const camera of cameras) {
    let entry = tiles.get(camera.name);
    if (!entry) tiles.set(camera.name, entry = tile(camera));
    entry.state.replaceChildren(badge(camera.state));
    entry.fps.textContent = `${camera.fps.toFixed(1)} fps`;
    entry.error.textContent = camera.error || "";
    refreshImage(entry, camera);
  }
}

async function refreshServices() {
  const answer = await getJSON("/api/services");
  servicesBody.replaceChildren(...answer.services.map((s) => el("tr", {},
    el("td", {}, s.service), el("td", { class: "muted" }, s.instance), el("td", {}, badge(s.state)),
    el("td", {}, `${Math.round(s.uptime_s)} s`), el("td", { class: "muted" }, `${s.age_s} s ago`))));
  const up = answer.uplink;
  uplink.replaceChildren(...(up
    ? [el("div", {}, el("b", {}, up.spooled), "events spooled"),
       el("div", {}, el("b", {}, `${up.oldest_s} s`), "oldest spooled"),
       ...Object.entries(up.sinks).map(([sink, ok]) => el("div", {}, el("b", {}, badge(ok ? "connected" : "disconnected")), `sink ${sink}`))]
    : [el("span", { class: "muted" }, "No uplink heard from.")]));
}

await start("/");
async function loop() {
  await Promise.allSettled([refreshCameras(), refreshServices()]);
  setTimeout(loop, 1000);
}
loop();
