// Panorama apps: a card per app of the site file, its state as the apps service reports it, its counters,
// why it last restarted or failed, its sandbox, and its video (video_out) per camera. Pictures are
// fetched one after another (at most 4 a second per camera) and swapped in once loaded: no broken image
// while there is none, and one connection per picture rather than a stream per camera held open.
import { badge, el, getJSON, start } from "/static/common.js";

const PICTURE_EVERY_MS = 250;
const main = document.getElementById("main");
const grid = el("div", { class: "grid", id: "apps" });
const empty = el("p", { class: "muted hidden", id: "empty" },
  "No apps in this site file: Panorama applications are listed under apps: (see the README).");
main.append(el("h1", {}, "Apps"), grid, empty);
const cards = new Map();

function card(app) {
  const state = el("span", { class: "state" });
  const stats = el("div", { class: "stats" });
  const note = el("div", { class: "muted note" });
  const error = el("div", { class: "error-text" });
  const sandbox = el("div", { class: "muted sandbox" });
  const videos = el("div", { class: "videos" });
  const node = el("div", { class: "card tile app", "data-app": app.name }, videos,
    el("div", { class: "body" },
      el("div", { class: "title" }, el("span", { class: "name" }, app.name), state),
      stats, note, error, sandbox));
  grid.append(node);
  const views = new Map(app.cameras.map((camera) => [camera.name, view(videos, app, camera)]));
  return { node, state, stats, note, error, sandbox, views };
}

function view(videos, app, camera) {
  const placeholder = el("div", { class: "placeholder" },
    el("span", {}, `No picture from ${app.name} on ${camera.name} yet`));
  const age = el("span", { class: "muted" });
  const figure = el("figure", { "data-camera": camera.name }, placeholder,
    el("figcaption", {}, el("span", {}, camera.name), age,
      el("a", { href: camera.live, target: "_blank", rel: "noopener", class: "live-link hidden" }, "live")));
  videos.append(figure);
  return { figure, placeholder, image: null, age, link: figure.querySelector(".live-link"), camera, loading: false, timer: null };
}

function stat(value, label) {
  return el("div", {}, el("b", {}, value), label);
}

function since(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds < 90 ? `${Math.round(seconds)} s` : `${Math.round(seconds / 60)} min`;
}

// The next picture of one camera, loaded off screen and swapped in; the next one after it, while it keeps coming.
function refreshPicture(entry) {
  if (entry.loading || !entry.camera.picture || document.hidden) return;
  entry.loading = true;
  const next = new Image();
  next.alt = `${entry.camera.name}: the app's video`;
  next.onload = () => {
    if (!entry.image) {
      entry.image = el("img", { class: "frame", alt: next.alt });
      entry.placeholder.replaceWith(entry.image);
    }
    entry.image.src = next.src;
    entry.loading = false;
    clearTimeout(entry.timer);
    if (!(entry.camera.picture_age_s > 5)) entry.timer = setTimeout(() => refreshPicture(entry), PICTURE_EVERY_MS);
  };
  next.onerror = () => { entry.loading = false; };  // kept as it was: a placeholder or the last picture
  next.src = `${entry.camera.latest}?t=${Date.now()}`;
}

function update(entry, app) {
  entry.state.replaceChildren(badge(app.state));
  const restarts = app.restarts
    ? `restarts${app.last_restart ? ` (last: ${app.last_restart})` : ""}`
    : "restarts";
  const heard = app.reported_state !== null;  // nothing heard: no numbers, rather than zeros that look measured
  const shown = (value) => (heard ? value : "—");
  entry.stats.replaceChildren(
    stat(shown(app.frames), "frames"), stat(shown(app.skipped), "skipped"), stat(shown(app.restarts), restarts),
    stat(shown(`${Math.round(app.memory_mb)} MB`), `memory of ${app.memory_limit_mb} MB`));
  if (app.stale) entry.note.textContent = `No word from the apps service for ${since(app.age_s)} (last: ${app.reported_state}).`;
  else if (app.reported_state === null && app.enabled) entry.note.textContent = "Not heard from yet: is the apps service running?";
  else entry.note.textContent = app.updated ? `Reported ${since(app.age_s)} ago by ${app.instance}.` : "";
  entry.error.textContent = app.error || "";
  entry.sandbox.textContent = app.sandbox ? `Sandbox: ${app.sandbox}` : "";
  for (const camera of app.cameras) {
    const view = entry.views.get(camera.name);
    if (!view) continue;
    view.camera = camera;
    view.age.textContent = camera.picture_age_s > 5 ? ` · picture ${since(camera.picture_age_s)} old` : "";
    view.link.classList.toggle("hidden", !camera.picture);  // the MJPEG stream in a tab of its own
    refreshPicture(view);
  }
}

async function refresh() {
  const apps = await getJSON("/api/apps");
  for (const app of apps) {
    let entry = cards.get(app.name);
    if (!entry) cards.set(app.name, entry = card(app));
    update(entry, app);
  }
  empty.classList.toggle("hidden", apps.length > 0);
}

await start("/apps");
async function loop() {
  await Promise.allSettled([refresh()]);
  setTimeout(loop, 1000);
}
loop();
