// One label as a card: photo, caption (mined words marked), classes with probabilities, model, latency.
import { el, pct, term } from "./common.js";

function caption(text, marks) {
  const node = el("p", { class: "caption" });
  if (!text) {
    node.append(el("span", { class: "muted", text: "no caption kept" }));
    return node;
  }
  let at = 0;
  for (const [start, end] of marks) {
    node.append(text.slice(at, start), el("mark", { text: text.slice(start, end) }));
    at = end;
  }
  node.append(text.slice(at));
  return node;
}

function scores(title, items) {
  if (!items.length) return null;
  return el("div", { class: "scores" }, el("h4", { text: title }),
    el("ul", {}, ...items.map(([name, score]) => el("li", {},
      el("span", { class: "term", text: term(name) }),
      el("span", { class: "bar" }, el("span", { class: "fill", dataset: { w: pct(score) } })),
      el("span", { class: "score", text: score.toFixed(2) })))));
}

function widths(node) {  // inline style attributes are not allowed by the policy: set widths through the DOM
  for (const fill of node.querySelectorAll(".fill")) fill.style.width = fill.dataset.w;
}

export function renderCard(c, onCorrect) {
  const photo = c.thumb
    ? el("img", { class: "thumb", src: `/api/thumb/${encodeURIComponent(c.id)}`, alt: "post photo", loading: "lazy" })
    : el("div", { class: "thumb none", text: "no photo" });
  const hinted = c.hints.categories.length ? `${c.hints.source}: ${c.hints.categories.map(term).join(", ")}`
    : c.hints.source;
  const meta = el("div", { class: "meta" },
    el("span", { class: "post-id", text: c.id }),
    el("span", { class: "version", text: `model ${c.version}` }),
    el("span", { class: "latency", text: `${c.latency_ms} ms` }),
    el("span", { class: "hints", text: `hints ${hinted}` }));
  const body = el("div", { class: "body" }, meta, caption(c.caption, c.marks));
  if (c.abstain) body.append(el("p", { class: "abstain", text: `abstained: ${term(c.abstain)}` }));
  body.append(el("div", { class: "classes" }, scores("categories", c.categories),
    scores("sub-categories", c.subcategories), scores("attributes", c.attributes)));
  if (c.correction) {
    const f = c.correction;
    body.append(el("p", { class: "corrected", text:
      `corrected by ${f.sent_by || "someone"}: ${[...f.categories, ...f.subcategories, ...f.attributes].map(term).join(", ")}` }));
  } else if (c.corrected) {
    body.append(el("p", { class: "corrected", text: "corrected (the trainer holds a correction)" }));
  }
  const button = el("button", { class: "correct", type: "button", text: "Correct…" });
  const node = el("article", { class: "card", dataset: { id: c.id, seq: c.seq } }, photo, body, button);
  button.addEventListener("click", () => onCorrect(node, c));
  widths(node);
  return node;
}
