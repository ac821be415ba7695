// Shared by both pages. Every piece of text goes into the DOM as text (textContent / text nodes), never as
// markup: captions, terms and names come from outside.

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);  // strings become text nodes
  }
  return node;
}

export function pct(score) {
  return `${Math.round(score * 100)}%`;
}

export function term(name) {
  return String(name).replaceAll("_", " ");
}

let csrf = null;

export async function session() {
  const reply = await fetch("/api/session", { credentials: "same-origin" });
  const state = await reply.json();
  csrf = state.csrf;
  return state;
}

// A write: JSON body, the CSRF token echoed in a header. Returns {ok, status, body}.
export async function write(path, method, body) {
  if (csrf === null) await session();
  const reply = await fetch(path, {
    method, credentials: "same-origin",
    headers: { "content-type": "application/json", "x-csrf-token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let answer = {};
  try { answer = await reply.json(); } catch { /* an empty answer */ }
  return { ok: reply.ok, status: reply.status, body: answer };
}
