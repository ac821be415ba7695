// The correction form: pick categories / sub-categories / attributes from the ontology, searching as you type.
import { el, term, write } from "./common.js";

// Asked each time a form opens: a promotion can change whether a correction may name several categories.
async function ontology() {
  return (await fetch("/api/ontology")).json();
}

// One searchable picker: a text box, the matching terms under it, the chosen ones as removable chips.
// ``single``: a choice replaces the one before (a one-garment model takes one category). ``changed`` hears
// of every choice (its name) and removal (null); the picker's node redraws its chips with ``node.redraw()``.
function picker(kind, label, options, chosen, single = false, changed = () => {}) {
  const chips = el("div", { class: "chips" });
  const list = el("ul", { class: "suggestions", role: "listbox" });
  const input = el("input", { type: "search", placeholder: `search ${label}`, "aria-label": `search ${label}`,
    class: `search-${kind}`, autocomplete: "off" });
  const redraw = () => {
    chips.replaceChildren(...[...chosen].map((name) => el("button", { type: "button", class: "chip",
      title: "remove", text: `${term(name)} ×`, onclick: () => { chosen.delete(name); redraw(); changed(null); } })));
  };
  const choose = (name) => {
    if (single) chosen.clear();
    chosen.add(name);
    input.value = "";
    suggest();
    redraw();
    changed(name);
  };
  const suggest = () => {
    const words = input.value.trim().toLowerCase().replaceAll(" ", "_");
    const hits = words ? options.filter(([name, hint]) => name.includes(words) || (hint || "").includes(words))
      .slice(0, 8) : [];
    list.replaceChildren(...hits.map(([name, hint]) => el("li", { role: "option", class: "suggestion",
      dataset: { term: name }, text: hint ? `${term(name)} (${term(hint)})` : term(name),
      onmousedown: (event) => { event.preventDefault(); choose(name); },
    })));
  };
  input.addEventListener("input", suggest);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      const first = list.querySelector("li");
      if (first) choose(first.dataset.term);
    }
  });
  redraw();
  const node = el("div", { class: `picker picker-${kind}` }, el("h4", { text: label }), chips, input, list);
  node.redraw = redraw;
  return node;
}

// A sub-category belongs to one category: choosing it chooses that category (in place of the one before, for
// a one-garment model), and a category no longer chosen takes its sub-categories with it. A correction that
// names an overcoat on a blouse contradicts itself, and the page refuses to send one.
function coupled(all, chosen) {
  const parent = Object.fromEntries(all.subcategories);
  let categories = null;
  let subcategories = null;
  const tidy = () => {
    for (const name of [...chosen.subcategories]) {
      if (!chosen.categories.has(parent[name])) chosen.subcategories.delete(name);
    }
    categories.redraw();
    subcategories.redraw();
  };
  categories = picker("categories", all.multi ? "categories" : "category", all.categories.map((n) => [n]),
    chosen.categories, !all.multi, tidy);
  subcategories = picker("subcategories", "sub-categories", all.subcategories, chosen.subcategories, false,
    (name) => {
      if (name && !chosen.categories.has(parent[name])) {
        if (!all.multi) chosen.categories.clear();
        chosen.categories.add(parent[name]);
      }
      tidy();
    });
  return [categories, subcategories];
}

export async function openCorrection(card, c, nameBox) {
  if (card.querySelector("form.correction")) return;
  const all = await ontology();
  const chosen = {
    categories: new Set(c.categories.slice(0, 1).map(([n]) => n)),
    subcategories: new Set(c.subcategories.slice(0, 1).map(([n]) => n)),
    attributes: new Set(),
  };
  const status = el("p", { class: "status", role: "status" });
  let form = null;
  // One click, one record: the buttons wait while a correction is on its way.
  const send = async (body) => {
    const buttons = [...form.querySelectorAll("button.send, button.no-garment")];
    buttons.forEach((b) => { b.disabled = true; });
    status.textContent = "sending…";
    try {
      const reply = await write("/api/feedback", "POST", { post_id: c.id, sent_by: nameBox.value, ...body });
      status.className = reply.ok ? "status ok" : "status error";
      status.textContent = reply.ok
        ? `received: feedback record ${reply.body.partition}/${reply.body.offset}` +
          (reply.body.kept === false ? " (not shown on the card: the label store did not answer)" : "")
        : `not sent: ${reply.body.error || reply.status}`;
    } catch (error) {
      status.className = "status error";
      status.textContent = `not sent: the page server did not answer (${error.message})`;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  };
  // A multi-label model learns "no garment" from a correction naming nothing; a one-garment model cannot.
  const none = all.multi ? [el("button", { type: "button", class: "no-garment", text: "Shows no garment",
    title: "the photo shows no garment: the label should abstain",
    onclick: () => send({ categories: [], subcategories: [], attributes: [] }) })] : [];
  form = el("form", { class: "correction" },
    ...coupled(all, chosen),
    picker("attributes", "attributes", all.attributes.map((n) => [n]), chosen.attributes),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "send", text: "Send correction" }),
      ...none,
      el("button", { type: "button", class: "cancel", text: "Close",
        onclick: () => { form.remove(); card.classList.remove("editing"); } })),
    status);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!chosen.categories.size) {  // "Shows no garment" says that, on purpose; an empty form is a slip
      status.className = "status error";
      status.textContent = "choose a category (or: Shows no garment)";
      return;
    }
    send({ categories: [...chosen.categories], subcategories: [...chosen.subcategories],
      attributes: [...chosen.attributes] });
  });
  card.classList.add("editing");
  card.append(form);
  form.querySelector("input").focus();
}
