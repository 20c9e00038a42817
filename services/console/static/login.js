// The login form: a JSON POST; the session cookie is HttpOnly, the CSRF token comes from /api/session.
const form = document.getElementById("login");
const message = document.getElementById("message");

function nextPage() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  // only a path on this console: never "//elsewhere" or "https://elsewhere"
  return next.startsWith("/") && !next.startsWith("//") ? next : "/";
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
