// Shared by every page: the session, API calls with the CSRF header, the page header, small helpers.
let csrf = null;

export async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.body !== undefined && typeof options.body !== "string") {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.body) };
  }
  if (options.method && options.method !== "GET" && csrf) headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401 && !path.startsWith("/api/login")) {
    location.href = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
    throw new Error("not logged in");
  }
  return response;
}

export async function getJSON(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function badge(state) {
  return el("span", { class: `badge ${state}` }, state);
}

export function when(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString();
}

export function fromNs(ns) {
  return new Date(ns / 1e6).toLocaleString();
}

export async function start(current) {
  const me = await getJSON("/api/session");
  csrf = me.csrf;
  const links = [["/", "Overview"], ["/analytics", "Analytics"]];
  if (me.fleet) links.push(["/fleet", "Fleet"]); // console.fleet: a console that follows no fleet has no Fleet page
  links.push(["/apps", "Apps"], ["/events", "Events"], ["/audit", "Audit"]);
  const header = el("header", {},
    el("div", { class: "brand" }, "EdgeSight", el("small", {}, me.site)),
    el("nav", {}, links.map(([href, text]) => el("a", { href, class: href === current ? "current" : null }, text))),
    el("button", { id: "logout", onclick: async () => { await api("/api/logout", { method: "POST" }); location.href = "/login"; } }, "Log out"),
  );
  document.body.prepend(header);
  return me;
}

export function cameraName() {
  return decodeURIComponent(location.pathname.split("/")[2]);
}
