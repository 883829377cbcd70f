// Modal dialogs on the native <dialog> element (focus trapping, Escape and the backdrop come for free).

import { $, h } from "./dom.js";

/** The text to show for an error: the API's message verbatim, then its code. */
export function describeError(error) {
  if (error && typeof error === "object" && "code" in error && error.code) {
    return `${error.message} (${error.code})`;
  }
  return error && error.message ? error.message : String(error);
}

/**
 * Show `dialog` modally. On submit, run `onSubmit`; close when it succeeds, or show its error inside the
 * dialog and stay open so the user can correct the input. Resolves true when submitted, false when dismissed.
 */
export function openDialog(dialog, onSubmit = async () => {}) {
  const form = dialog.querySelector("form");
  const errorEl = dialog.querySelector(".dialog-error");
  if (errorEl) {
    errorEl.hidden = true;
    errorEl.textContent = "";
  }
  const listeners = new AbortController();
  const { signal } = listeners;
  return new Promise((resolve) => {
    const finish = (result) => {
      listeners.abort();
      if (dialog.open) dialog.close();
      resolve(result);
    };
    dialog.addEventListener("close", () => finish(false), { signal });
    for (const button of dialog.querySelectorAll("[data-close]")) {
      button.addEventListener("click", () => finish(false), { signal });
    }
    if (form) {
      form.addEventListener(
        "submit",
        async (event) => {
          event.preventDefault();
          const submit = form.querySelector("[type=submit]");
          if (submit) submit.disabled = true;
          try {
            await onSubmit();
            finish(true);
          } catch (error) {
            if (errorEl) {
              errorEl.textContent = describeError(error);
              errorEl.hidden = false;
            }
          } finally {
            if (submit) submit.disabled = false;
          }
        },
        { signal },
      );
    }
    dialog.showModal();
  });
}

/** Ask before something irreversible; `action` runs on confirmation and its API error stays in the dialog. */
export function confirmAction({ title, text, confirmLabel }, action) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  dialog.querySelector("[type=submit]").textContent = confirmLabel;
  return openDialog(dialog, action);
}

/** A labelled block of text for dialogs (history entries). */
export function textBlock(label, content, time) {
  return h("li", { class: "history-entry" }, h("div", { class: "history-head" }, label, time), h("p", { class: "message-content" }, content));
}
