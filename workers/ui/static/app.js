// The live list: server-sent events in, newest cards on top; filters reconnect with a fresh snapshot.
import { el, session, term, write } from "./common.js";
import { renderCard, renderCompact } from "./card.js";
import { openCorrection } from "./correct.js";

const MAX_CARDS = 100;
const FULL_PER_FLUSH = 4;  // in a flood the newest cards of a draw are drawn in full, the rest in one line at first
const FLOOD = 25;  // a draw of more cards than this is a flood; a smaller one is drawn in full at once
const DETAIL_AFTER_MS = 300;
const list = document.getElementById("cards");
const liveState = document.getElementById("live-state");
const nameBox = document.getElementById("name");
const filters = {
  category: document.getElementById("f-category"), version: document.getElementById("f-version"),
  low: document.getElementById("f-low"), threshold: document.getElementById("f-threshold"),
  abstained: document.getElementById("f-abstained"), corrected: document.getElementById("f-corrected"),
};
let source = null;
let pending = [];

const onCorrect = (node, c) => openCorrection(node, c, nameBox);

function query() {
  const q = new URLSearchParams();
  if (filters.category.value) q.set("category", filters.category.value);
  if (filters.version.value) q.set("version", filters.version.value);
  if (filters.low.checked) q.set("low", filters.threshold.value || "0.5");
  if (filters.abstained.checked) q.set("abstained", "1");
  if (filters.corrected.checked) q.set("corrected", "1");
  return q.toString();
}

function knowVersion(version) {
  if (![...filters.version.options].some((o) => o.value === version)) {
    filters.version.append(el("option", { value: version, text: version }));
  }
}

// A draw costs the browser a layout and a paint however few cards it adds (docs/ui.md has the measurements), so
// cards are drawn in groups: when DRAW_AT have arrived (at most every MIN_DRAW_MS) or when the oldest waiting
// one has waited MAX_WAIT_MS. A flood is drawn ten times a second; the few labels a second of one classifier
// twice, which leaves its cores to it when the browser shares its machine.
const MIN_DRAW_MS = 100;
const MAX_WAIT_MS = 500;
const DRAW_AT = 50;
let lastFlush = 0;
let waitingSince = 0;
let timer = null;
let timerDue = Infinity;

function schedule() {
  const now = performance.now();
  if (!waitingSince) waitingSince = now;
  const due = pending.length >= DRAW_AT ? Math.max(now, lastFlush + MIN_DRAW_MS) : waitingSince + MAX_WAIT_MS;
  if (timer !== null && timerDue <= due) return;
  clearTimeout(timer);
  timerDue = due;
  timer = setTimeout(() => requestAnimationFrame(flush), Math.max(0, due - now));
}

function flush() {
  clearTimeout(timer);
  timer = null;
  timerDue = Infinity;
  waitingSince = 0;
  lastFlush = performance.now();
  const batch = pending.slice(0, MAX_CARDS);
  pending = [];
  const fresh = document.createDocumentFragment();
  batch.forEach((c, i) => {
    knowVersion(c.version);
    fresh.append(batch.length <= FLOOD || i < FULL_PER_FLUSH ? renderCard(c, onCorrect) : compact(c));
  });
  list.prepend(fresh);
  const cards = list.children;
  for (let i = cards.length - 1; i >= MAX_CARDS; i--) {
    if (!cards[i].classList.contains("editing")) cards[i].remove();  // an open form stays
  }
}

function compact(c) {
  const node = renderCompact(c);
  setTimeout(() => { if (node.isConnected) node.replaceWith(renderCard(c, onCorrect)); }, DETAIL_AFTER_MS);
  return node;
}

function connect() {
  if (source) source.close();
  pending = [];
  source = new EventSource(`/api/events?${query()}`);
  source.addEventListener("reset", (event) => {
    const open = [...list.querySelectorAll(".card.editing")];  // a form being filled in stays, once
    const kept = new Set(open.map((node) => node.dataset.id));
    list.replaceChildren(...open);
    pending = JSON.parse(event.data).filter((c) => !kept.has(c.id));
    flush();
    liveState.textContent = "live";
  });
  source.addEventListener("labels", (event) => {
    pending = JSON.parse(event.data).concat(pending);
    schedule();
  });
  source.addEventListener("error", () => { liveState.textContent = "reconnecting…"; });
}

async function setUpSession() {
  const state = await session();
  const form = document.getElementById("signin");
  const shown = document.getElementById("session-state");
  const token = document.getElementById("token");
  nameBox.value = localStorage.getItem("stylestream-name") || "";
  nameBox.addEventListener("change", () => localStorage.setItem("stylestream-name", nameBox.value));
  const show = (signedIn) => {
    shown.textContent = !state.corrections ? "read-only (no token configured)" : signedIn ? "signed in" : "read-only";
    token.hidden = signedIn || !state.corrections;
    document.getElementById("signin-button").textContent = signedIn ? "Sign out" : "Sign in";
    document.body.classList.toggle("signed-in", signedIn);
  };
  show(state.signed_in);
  let signedIn = state.signed_in;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const reply = signedIn ? await write("/api/session", "DELETE")
      : await write("/api/session", "POST", { token: token.value });
    token.value = "";
    if (reply.ok) signedIn = reply.body.signed_in;
    else shown.textContent = `not signed in: ${reply.body.error || reply.status}`;
    if (reply.ok) show(signedIn);
  });
}

async function main() {
  const terms = await (await fetch("/api/ontology")).json();
  for (const name of terms.categories) filters.category.append(el("option", { value: name, text: term(name) }));
  for (const input of Object.values(filters)) input.addEventListener("change", connect);
  await setUpSession();
  connect();
}

main();
