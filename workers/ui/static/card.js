// One label as a card: photo, caption (mined words marked), classes with probabilities, model, latency.
// Cards are cloned from the page's templates (hundreds a second must stay cheap) and filled as text.
import { el, pct, term } from "./common.js";

const PHOTO_AFTER_MS = 300;
const ROWS = 3;  // the top three of each class: what a glance takes in (the label holds more)
const templates = {};

function clone(name) {
  templates[name] ??= document.getElementById(`t-${name}`).content.firstElementChild;
  return templates[name].cloneNode(true);
}

// A photo is fetched once its card has been on screen for a moment. Fetching and drawing photos is most of what
// the page costs its browser, and a card pushed below the fold, or out of the list, before anyone could look at
// it never needs one; scrolling down fetches those that come into view.
const waiting = new Map();
const onScreen = new IntersectionObserver((entries) => {
  for (const { target, isIntersecting } of entries) {
    clearTimeout(waiting.get(target));
    waiting.delete(target);
    if (isIntersecting) fetchSoon(target);  // after it has stayed a moment, not while it scrolls by
  }
});

function fetchSoon(photo) {
  waiting.set(photo, setTimeout(() => {
    waiting.delete(photo);
    onScreen.unobserve(photo);
    if (!photo.isConnected) return;
    if (!due.length) setTimeout(showDue, 0);  // after the other photos that came due with it
    due.push(photo);
  }, PHOTO_AFTER_MS));
}

// The photos that come due together (a draw's cards on screen) come as one picture, the posts' thumbnails side by
// side (/api/thumbs), and are shown in one frame: each image fetched on its own costs the browser a request, a
// load, a decode and a frame, several a second at a classifier's rate.
const SHEET_CELLS = 12;
const due = [];

function showDue() {
  const batch = due.splice(0).filter((photo) => photo.isConnected);
  for (let at = 0; at < batch.length; at += SHEET_CELLS) showSheet(batch.slice(at, at + SHEET_CELLS));
}

async function showSheet(photos) {
  const url = `/api/thumbs?ids=${photos.map((photo) => encodeURIComponent(photo.dataset.post)).join(",")}`;
  const sheet = new Image();
  sheet.src = url;
  const loaded = await sheet.decode().then(() => true, () => false);
  requestAnimationFrame(() => photos.forEach((photo, n) => {
    if (!loaded) {
      photo.classList.add("none");
      photo.textContent = "no photo";
      return;
    }
    photo.style.backgroundImage = `url("${url}")`;  // ids are [A-Za-z0-9_.:-], encoded: nothing to escape
    photo.style.backgroundSize = `${photos.length * 100}% 100%`;
    photo.style.backgroundPosition = `${photos.length > 1 ? (100 * n) / (photos.length - 1) : 0}% 0`;
    photo.classList.add("loaded");
  }));
}

// A card leaving the list stops being watched (the observer would otherwise keep it).
export function forget(card) {
  const photo = card.querySelector(".thumb[data-post]");
  if (photo === null) return;
  clearTimeout(waiting.get(photo));
  waiting.delete(photo);
  onScreen.unobserve(photo);
}

function fillCaption(node, text, marks) {
  if (!text) {
    node.append(el("span", { class: "muted", text: "no caption kept" }));
    return;
  }
  let at = 0;
  for (const [start, end] of marks) {
    node.append(text.slice(at, start), el("mark", { text: text.slice(start, end) }));
    at = end;
  }
  node.append(text.slice(at));
}

function scores(title, items) {
  const box = clone("scores");
  box.firstElementChild.textContent = title;
  for (const [name, score] of items.slice(0, ROWS)) {
    const row = clone("row");
    const [label, bar, value] = row.children;
    label.textContent = term(name);
    bar.firstElementChild.style.width = pct(score);  // style attributes are refused by the policy; the CSSOM is not
    value.textContent = score.toFixed(2);
    box.lastElementChild.append(row);
  }
  return box;
}

export function renderCard(c, onCorrect) {
  const node = clone("card");
  const [photo, body, button] = node.children;
  const [meta, caption, classes] = body.children;
  node.dataset.id = c.id;
  node.dataset.seq = c.seq;
  if (c.thumb) {
    photo.dataset.post = c.id;
    onScreen.observe(photo);
  } else {
    photo.replaceWith(el("div", { class: "thumb none", text: "no photo" }));
  }
  const hinted = c.hints.categories.length ? `${c.hints.source}: ${c.hints.categories.map(term).join(", ")}`
    : c.hints.source;
  const [id, version, latency, hints] = meta.children;
  id.textContent = c.id;
  version.textContent = `model ${c.version}`;
  latency.textContent = `${c.latency_ms} ms`;
  hints.textContent = `hints ${hinted}`;
  fillCaption(caption, c.caption, c.marks);
  if (c.abstain) caption.after(el("p", { class: "abstain", text: `abstained: ${term(c.abstain)}` }));
  for (const [title, items] of [["categories", c.categories], ["sub-categories", c.subcategories],
    ["attributes", c.attributes]]) {
    if (items.length) classes.append(scores(title, items));
  }
  if (c.correction) {
    const f = c.correction;
    const named = f.categories.length ? [...f.categories, ...f.subcategories, ...f.attributes].map(term).join(", ")
      : "shows no garment";
    body.append(el("p", { class: "corrected", text: `corrected by ${f.sent_by || "someone"}: ${named}` }));
  } else if (c.corrected) {
    body.append(el("p", { class: "corrected", text: "corrected (the trainer holds a correction)" }));
  }
  button.addEventListener("click", () => onCorrect(node, c));
  body.append(el("button", { class: "like", type: "button", text: "More like this",
    onclick: (event) => showSimilar(event.target, c.id) }));
  return node;
}

// Items like this post (other posts and shops' catalogue items), each with the part it was picked for.
async function showSimilar(button, id) {
  button.disabled = true;
  const strip = el("div", { class: "similar", text: "…" });
  button.replaceWith(strip);
  const reply = await fetch(`/api/recommend?like=${encodeURIComponent(id)}&k=6`);
  const answer = await reply.json();
  strip.textContent = "";
  if (!reply.ok || !answer.items.length) {
    strip.append(el("span", { class: "muted", text: reply.ok ? "nothing like it indexed yet" : answer.error }));
    return;
  }
  for (const item of answer.items) {
    const photo = el("img", { class: "thumb small", alt: item.post_id, src: `/api/thumb/${encodeURIComponent(item.post_id)}` });
    photo.addEventListener("error", () => photo.replaceWith(el("div", { class: "thumb small none", text: "no photo" })));
    strip.append(el("figure", {}, photo, el("figcaption", {
      text: `${item.catalogue ? `${item.user} · ` : ""}${term(item.facet)}: ${item.terms.map(term).join(", ")}` })));
  }
}
