// DOM helpers. Text from the API only ever reaches the page through textContent or attribute values set
// with setAttribute, never as parsed HTML, so nothing the server stores can become markup.

/**
 * Build an element: h("button", {type: "button", class: "x", onClick: fn}, "Label", child).
 * Props starting with "on" become event listeners; `hidden`/`disabled` booleans become properties.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing element #${id}`);
  return el;
}

/** A <time> element for an ISO-8601 timestamp, shown in the reader's locale. */
export function timeEl(iso, className = "time") {
  if (!iso) return null;
  const date = new Date(iso);
  const label = Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  return h("time", { datetime: iso, class: className, title: iso }, label);
}

/** Disable a button while `work` runs, so a double click never sends a request twice. */
export async function busy(button, work) {
  const was = button.disabled;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    return await work();
  } finally {
    button.disabled = was;
    button.removeAttribute("aria-busy");
  }
}
