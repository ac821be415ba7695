// The model page: serving version, agreement of each version with corrections, promotions and rollbacks.
import { el, pct } from "./common.js";

function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function draw(facts) {
  document.getElementById("serving").textContent = facts.serving || "nothing promoted yet (the packaged default serves)";
  document.getElementById("guard").textContent =
    `The live guard rolls back a new version whose agreement is more than ${pct(facts.guard.margin)} below the ` +
    `previous one's, once both have ${facts.guard.min_corrections} corrected labels.`;
  document.querySelector("#versions tbody").replaceChildren(...facts.versions.map((v) => el("tr",
    { class: v.serving ? "serving-row" : "" },
    el("td", {}, el("span", { class: "version", text: v.version }), v.serving ? el("span", { class: "badge", text: "serving" }) : null),
    el("td", { text: v.agreement === null ? "—" : pct(v.agreement) }),
    el("td", { text: `${v.agree} agree of ${v.corrections}` }),
    el("td", { text: v.figure ? `${v.figure.value.toFixed(3)} (${v.figure.name})` : "—" }))));
  const events = facts.events.length ? facts.events.map((e) => el("tr", { class: `event-${e.kind}` },
    el("td", { text: when(e.at) }), el("td", { text: e.kind }), el("td", { text: e.version }),
    el("td", { text: e.reason || "—" })))
    : [el("tr", {}, el("td", { colspan: "4", class: "muted", text: "no promotion recorded" }))];
  document.querySelector("#events tbody").replaceChildren(...events);
  document.getElementById("history").textContent = facts.history.length
    ? `Rollback order (newest first): ${facts.history.join(" → ")}` : "";
}

async function refresh() {
  try {
    const reply = await fetch("/api/model", { credentials: "same-origin" });
    draw(await reply.json());
  } catch (error) {
    document.getElementById("serving").textContent = `cannot load: ${error}`;
  }
}

refresh();
setInterval(refresh, 5000);
