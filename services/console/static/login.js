// The login form: a JSON POST; the session cookie is HttpOnly, the CSRF token comes from /api/session.
const form = document.getElementById("login");
const message = document.getElementById("message");

function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  // Only a path on this console. Browsers read "/\host" and "/<tab>/host" as "//host" (another
  // site), so backslashes, whitespace and control characters are refused outright, and what is left
  // must still resolve to this very origin.
  if (!/^\/(?![\/\\])[^\\\s\u0000-\u001f\u007f]*$/.test(next)) return "/";
  const target = new URL(next, location.origin);
  return target.origin === location.origin ? target.pathname + target.search + target.hash : "/";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch("/api/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ password: document.getElementById("password").value }),
  });
  if (response.ok) {
    location.href = nextPage();
    return;
  }
  const answer = await response.json().catch(() => ({}));
  message.textContent = response.status === 429
    ? `Too many failed logins: try again in ${response.headers.get("Retry-After")} s.`
    : answer.error || `Login failed (${response.status})`;
  message.classList.remove("hidden");
});
