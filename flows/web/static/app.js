// The explorer page: an artist search box with completions, the related artists of every model
// side by side, and a listener's recommendations. Everything comes from the JSON API of the same
// server; the address bar's #artist=… / #user=… say what is shown, so views can be linked.
"use strict";

const $ = (id) => document.getElementById(id);
const api = async (path, params) => {
  const response = await fetch(`${path}?${new URLSearchParams(params)}`);
  const body = await response.json();
  if (!response.ok) throw Object.assign(new Error(body.detail || response.statusText), body);
  return body;
};
const el = (tag, { dataset = {}, ...props } = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset); // node.dataset itself is read-only
  node.append(...children);
  return node;
};
const artistLink = (name) => el("a", { href: `#artist=${encodeURIComponent(name)}`, className: "artist" }, name);

function showMessage(box, error) {
  box.replaceChildren(error.message);
  if (error.suggestions && error.suggestions.length) {
    box.append(" ", ...error.suggestions.map(artistLink));
  }
  box.hidden = false;
}

async function loadRunInfo() {
  try {
    const [runs, info] = await Promise.all([api("/api/runs", { limit: 20 }), api("/api/info", {})]);
    const current = runs.filter((run) => run.current)
      .map((run) => `run ${run.run_id} (${run.dataset}; ${run.related_model} / ${run.user_model})`);
    $("run-info").textContent = `${current.join(", ") || "nothing published yet"} — ${info.database}`;
  } catch (error) {
    $("run-info").textContent = error.message;
  }
}

// --- the artist page --------------------------------------------------------------------------
let completionRequest = 0;
let highlighted = -1;

async function complete() {
  const prefix = $("artist-input").value;
  const ticket = ++completionRequest; // answers that arrive after a newer keystroke are dropped
  const names = prefix.trim() ? await api("/api/artists", { prefix }).catch(() => []) : [];
  if (ticket !== completionRequest) return;
  highlighted = -1;
  $("completions").replaceChildren(...names.map((name) => el("li", { role: "option", textContent: name })));
  setCompletionsOpen(names.length > 0);
}

function setCompletionsOpen(open) {
  $("completions").hidden = !open;
  $("artist-input").setAttribute("aria-expanded", String(open));
}

function moveHighlight(step) {
  const items = [...$("completions").children];
  if (!items.length) return;
  highlighted = (highlighted + step + items.length) % items.length;
  items.forEach((item, i) => item.setAttribute("aria-selected", String(i === highlighted)));
}

async function showRelated(name) {
  const box = $("artist-message");
  box.hidden = true;
  $("artist-input").value = name;
  setCompletionsOpen(false);
  try {
    const answer = await api("/api/related", { artist: name, n: $("artist-n").value || 10 });
    $("related-title").textContent =
      `Related to ${answer.artist_name} (run ${answer.run_id}, ${answer.dataset})`;
    $("related-title").hidden = false;
    $("related").replaceChildren(...answer.models.map((list) => el("section",
      { className: "model", dataset: { model: list.model } },
      el("h3", {}, list.model),
      el("ol", {}, ...list.rows.map((row) => el("li", { dataset: { key: row.artist_key } },
        artistLink(row.artist_name), el("span", { className: "score" }, row.score.toFixed(3))))))));
  } catch (error) {
    $("related-title").hidden = true;
    $("related").replaceChildren();
    showMessage(box, error);
  }
}

// --- the listener page ------------------------------------------------------------------------
async function showUser(user) {
  const box = $("user-message");
  box.hidden = true;
  $("user-input").value = user;
  const table = $("recommendations");
  try {
    const answer = await api("/api/recommend", { user, n: $("user-n").value || 10 });
    $("user-title").textContent = `For user ${answer.user_key} (run ${answer.run_id}, ${answer.dataset})`;
    $("user-title").hidden = false;
    table.tBodies[0].replaceChildren(...answer.rows.map((row) => el("tr", { dataset: { key: row.artist_key } },
      el("td", {}, String(row.rank)), el("td", {}, artistLink(row.artist_name)),
      el("td", { className: "score" }, row.score.toFixed(3)),
      el("td", { className: "because" }, row.because_artist_name ? artistLink(row.because_artist_name) : ""))));
    table.hidden = false;
  } catch (error) {
    $("user-title").hidden = true;
    table.hidden = true;
    showMessage(box, error);
  }
}

// --- routing: the hash says which page and what is on it ---------------------------------------
function route() {
  const params = new URLSearchParams(location.hash.slice(1));
  const onUser = params.has("user");
  $("artist-page").hidden = onUser;
  $("user-page").hidden = !onUser;
  $("nav-artist").classList.toggle("active", !onUser);
  $("nav-user").classList.toggle("active", onUser);
  if (onUser && params.get("user")) showUser(params.get("user"));
  if (!onUser && params.get("artist")) showRelated(params.get("artist"));
}

function go(key, value) {
  const hash = `#${key}=${encodeURIComponent(value)}`;
  if (location.hash === hash) route(); // same view again: reload it (a new run may be current)
  else location.hash = hash;
}

$("artist-input").addEventListener("input", complete);
$("artist-input").addEventListener("keydown", (event) => {
  if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    moveHighlight(event.key === "ArrowDown" ? 1 : -1);
    event.preventDefault();
  } else if (event.key === "Escape") {
    setCompletionsOpen(false);
  } else if (event.key === "Enter" && highlighted >= 0 && !$("completions").hidden) {
    $("artist-input").value = $("completions").children[highlighted].textContent;
  }
});
$("completions").addEventListener("mousedown", (event) => {
  if (event.target.tagName === "LI") go("artist", event.target.textContent);
});
$("artist-input").addEventListener("blur", () => setTimeout(() => setCompletionsOpen(false), 150));
$("artist-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if ($("artist-input").value.trim()) go("artist", $("artist-input").value.trim());
});
$("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if ($("user-input").value.trim()) go("user", $("user-input").value.trim());
});
window.addEventListener("hashchange", route);
loadRunInfo();
route();
