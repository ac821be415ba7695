// The live list: server-sent events in, newest cards on top; filters reconnect with a fresh snapshot.
import { el, session, term, write } from "./common.js";
import { forget, renderCard } from "./card.js";
import { openCorrection } from "./correct.js";

const MAX_CARDS = 100;
const CARD_PX = 150;  // no full card is shorter: a draw's newest innerHeight / CARD_PX cards fill the screen
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

const versions = new Set();

function knowVersion(version) {
  if (versions.has(version)) return;
  versions.add(version);
  if (![...filters.version.options].some((o) => o.value === version)) {
    filters.version.append(el("option", { value: version, text: version }));
  }
}

// Cards are drawn in groups, each group one layout and paint: when DRAW_AT have arrived (at most every MIN_DRAW_MS)
// or when the oldest waiting one has waited MAX_WAIT_MS. A flood is drawn five to ten times a second, the few
// dozen labels a second of one classifier once (what the page costs a browser: docs/ui.md).
const MIN_DRAW_MS = 100;
const MAX_WAIT_MS = 1000;
const DRAW_AT = 100;
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
  if (paused) return;  // a draw due before the pause
  clearTimeout(timer);
  timer = null;
  timerDue = Infinity;
  waitingSince = 0;
  lastFlush = performance.now();
  const batch = pending.slice(0, MAX_CARDS);
  pending = [];
  batch.forEach((c) => knowVersion(c.version));
  const onScreen = Math.ceil(window.innerHeight / CARD_PX);
  const fresh = document.createDocumentFragment();
  fresh.append(...batch.slice(0, onScreen).map((c) => renderCard(c, onCorrect)));
  if (batch.length > onScreen) fresh.append(folded(batch.slice(onScreen)));
  list.prepend(fresh);
  trim();
}

// The labels a draw would push below the fold wait as one line ("43 more labels") and are drawn as cards when it
// comes into view. At a classifier's rate nearly all of them leave the list before anyone scrolls down, and cards
// built, laid out and painted below the fold were most of what a draw cost the browser.
const folds = new Map();
const unfold = new IntersectionObserver((entries) => {
  for (const { target, isIntersecting } of entries) {
    if (!isIntersecting || !target.isConnected) continue;
    unfold.unobserve(target);
    target.replaceWith(...folds.get(target).map((c) => renderCard(c, onCorrect)));
    folds.delete(target);
  }
});  // in view, not near it: the line sits just below the fold, under cards at least the screen's height

function folded(cards) {
  const node = el("article", { class: "card more" });
  folds.set(node, cards);
  describe(node);
  unfold.observe(node);
  return node;
}

function describe(node) {
  const cards = folds.get(node);
  node.dataset.ids = cards.map((c) => c.id).join(" ");  // the posts it stands for
  node.textContent = `${cards.length} more label${cards.length === 1 ? "" : "s"}`;
}

// The list keeps the newest MAX_CARDS labels, counting those folded into a line; an open form stays.
function trim() {
  const weight = (node) => folds.get(node)?.length ?? 1;
  let excess = -MAX_CARDS;
  for (const node of list.children) excess += weight(node);
  for (let node = list.lastElementChild; node && excess > 0;) {
    const above = node.previousElementSibling;
    const cards = folds.get(node);
    if (cards && cards.length > excess) {
      cards.length -= excess;
      describe(node);
      excess = 0;
    } else if (!node.classList.contains("editing")) {
      excess -= weight(node);
      drop(node);
      node.remove();
    }
    node = above;
  }
}

function drop(card) {
  forget(card);
  unfold.unobserve(card);
  folds.delete(card);
}

// Paused, the list stays as it is (to look at it, or correct it, while labels keep coming) and costs the browser
// only the event stream; the newest labels wait and are drawn on resuming.
let paused = false;
let unseen = 0;
const pauseButton = document.getElementById("pause");

function showState() {
  liveState.textContent = paused ? `paused · ${unseen} new` : "live";
}

function setPaused(value) {
  paused = value;
  unseen = 0;
  pauseButton.textContent = paused ? "Resume" : "Pause";
  pauseButton.setAttribute("aria-pressed", String(paused));
  showState();
  if (!paused && pending.length) requestAnimationFrame(flush);
}

function replace(snapshot) {
  const open = [...list.querySelectorAll(".card.editing")];  // a form being filled in stays, once
  const kept = new Set(open.map((node) => node.dataset.id));
  for (const card of list.children) if (!kept.has(card.dataset.id)) drop(card);
  list.replaceChildren(...open);
  pending = snapshot.filter((c) => !kept.has(c.id));
  flush();
}

function connect() {
  if (source) source.close();
  pending = [];
  source = new EventSource(`/api/events?${query()}`);
  source.addEventListener("reset", (event) => {
    const snapshot = JSON.parse(event.data);
    if (paused) pending = snapshot.slice(0, MAX_CARDS);  // a reconnection: the list being looked at stays
    else replace(snapshot);
    showState();
  });
  source.addEventListener("labels", (event) => {
    // While the page is hidden nothing is drawn (no animation frames), so only the cards a draw can show are kept;
    // shown, what is waiting is drawn first rather than cut.
    const cards = JSON.parse(event.data);
    if (!paused && !document.hidden && pending.length && pending.length + cards.length > MAX_CARDS) flush();
    pending = cards.concat(pending).slice(0, MAX_CARDS);
    if (!paused) {
      schedule();
      return;
    }
    unseen += cards.length;
    showState();
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
  for (const input of Object.values(filters)) {
    input.addEventListener("change", () => {  // another view asked for: shown now, and live
      setPaused(false);
      connect();
    });
  }
  pauseButton.addEventListener("click", () => setPaused(!paused));
  await setUpSession();
  connect();
}

main();
