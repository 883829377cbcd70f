// The open thread's messages: newest page first from the API (order=desc), shown oldest → newest, with
// "Load older" walking back by keyset cursor; edit (audited, with history) and delete.

import { confirmAction, describeError, openDialog, textBlock } from "./dialogs.js";
import { $, busy, clear, h, timeEl } from "./dom.js";
import { threadPath } from "./threads.js";

const PAGE_SIZE = 30;
const ROLE_LABELS = { user: "User", assistant: "Assistant", system: "System", tool: "Tool" };
// Longer tool arguments or outputs start collapsed (a summary line; the whole text one click away).
const COLLAPSE_CHARS = 240;
const COLLAPSE_LINES = 6;

/** JSON text shown indented when it parses (a model's arguments usually come on one line), else as written. */
function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** A block of tool text: open when short, a collapsed <details> with its first line as the summary when long. */
function toolText(label, text) {
  const shown = pretty(text ?? "");
  const body = h("pre", { class: "tool-text" }, shown);
  const long = shown.length > COLLAPSE_CHARS || shown.split("\n").length > COLLAPSE_LINES;
  const firstLine = shown.split("\n")[0].slice(0, 80);
  return h(
    "details",
    { class: "tool-block", open: !long },
    h("summary", {}, h("span", { class: "tool-label" }, label), long ? h("span", { class: "tool-preview" }, `${firstLine}…`) : null),
    body,
  );
}

/** An image part as a thumbnail that opens the full image. */
function thumbnail(image, index) {
  return h(
    "a",
    { class: "thumb-link", href: image.url, target: "_blank", rel: "noopener noreferrer" },
    h("img", { class: "thumb", src: image.url, alt: `Image ${index + 1}`, loading: "lazy" }),
  );
}

export class MessagesView {
  constructor(ctx) {
    this.ctx = ctx;
    this.thread = null;
    this.messages = [];
    this.cursor = null;
    this.hasMore = false;
    this.generation = 0;
    this.listEl = $("messages");
    this.scrollEl = $("messages-scroll");
    this.emptyEl = $("messages-empty");
    this.olderButton = $("messages-older");
    this.olderButton.addEventListener("click", () => busy(this.olderButton, () => this.load(false)));
  }

  open(thread) {
    this.thread = thread;
    this.messages = [];
    this.cursor = null;
    this.hasMore = false;
    this.render();
    return this.load(true);
  }

  messagesPath() {
    return `${threadPath(this.thread)}/messages`;
  }

  async load(fresh) {
    const generation = fresh ? ++this.generation : this.generation;
    try {
      const page = await this.ctx.api.get(this.messagesPath(), {
        order: "desc",
        limit: PAGE_SIZE,
        after: fresh ? undefined : this.cursor,
      });
      if (generation !== this.generation) return; // another thread was opened meanwhile
      const older = page.data.slice().reverse();
      this.cursor = page.last_id ?? this.cursor;
      this.hasMore = Boolean(page.has_more);
      if (fresh) {
        this.messages = older;
        this.render();
        this.scrollToEnd();
      } else {
        // Keep the reader where they were: the older messages appear above what is on screen.
        const fromBottom = this.scrollEl.scrollHeight - this.scrollEl.scrollTop;
        this.messages = older.concat(this.messages);
        this.render();
        this.scrollEl.scrollTop = this.scrollEl.scrollHeight - fromBottom;
      }
    } catch (error) {
      this.ctx.fail(error);
    }
  }

  scrollToEnd() {
    this.scrollEl.scrollTop = this.scrollEl.scrollHeight;
  }

  render() {
    clear(this.listEl);
    for (const message of this.messages) this.listEl.append(this.item(message));
    this.emptyEl.hidden = this.messages.length > 0;
    this.olderButton.hidden = !this.hasMore;
  }

  item(message) {
    const head = h(
      "div",
      { class: "message-head" },
      h("span", { class: "role" }, ROLE_LABELS[message.role] ?? message.role),
      message.model ? h("span", { class: "model" }, message.model) : null,
      timeEl(message.created_at),
      message.edit_count > 0
        ? h(
            "button",
            {
              type: "button",
              class: "edited",
              title: "Show the edit history",
              "aria-label": `Edited ${message.edit_count} time${message.edit_count === 1 ? "" : "s"}: show history`,
              onClick: () => this.history(message),
            },
            `edited (${message.edit_count})`,
          )
        : null,
    );
    const isMessage = (message.type ?? "message") === "message";
    const actions = h(
      "div",
      { class: "message-actions" },
      h("button", { type: "button", class: "button-quiet", "aria-label": "Fork from this message", title: "A new thread with the history up to here", onClick: (event) => busy(event.currentTarget, () => this.fork(message)) }, "Fork"),
      // A call's arguments and a tool's output are what the model said and got: they are not edited here.
      isMessage
        ? h("button", { type: "button", class: "button-quiet", "aria-label": "Edit message", onClick: () => this.edit(message) }, "Edit")
        : null,
      h("button", { type: "button", class: "button-quiet", "aria-label": "Delete message", onClick: () => this.remove(message) }, "Delete"),
    );
    return h(
      "li",
      { class: `message message-${message.role} message-type-${message.type ?? "message"}`, dataset: { id: message.id } },
      head,
      this.body(message),
      actions,
    );
  }

  /** What an item says: a message's text and images, a function call, a tool's output. */
  body(message) {
    if (message.type === "function_call") {
      return h(
        "div",
        { class: "tool-call" },
        h("p", { class: "tool-name" }, h("span", { class: "tool-kind" }, "Calls "), h("code", {}, message.name ?? "?"), h("span", { class: "call-id" }, message.call_id)),
        toolText("Arguments", message.arguments ?? message.content),
      );
    }
    if (message.type === "function_call_output") {
      const output = typeof message.output === "string" ? message.output : message.content;
      return h(
        "div",
        { class: "tool-output" },
        h("p", { class: "tool-name" }, h("span", { class: "tool-kind" }, "Output of "), h("span", { class: "call-id" }, message.call_id)),
        toolText("Output", output),
      );
    }
    const images = message.images ?? [];
    return h(
      "div",
      { class: "message-body" },
      message.content ? h("p", { class: "message-content" }, message.content) : null,
      images.length ? h("div", { class: "thumbs" }, images.map(thumbnail)) : null,
    );
  }

  /** A message being written right now (the composer's turn), before the API has stored it. */
  appendPending(role, text) {
    this.emptyEl.hidden = true;
    const content = h("p", { class: "message-content" }, text);
    const li = h(
      "li",
      { class: `message message-${role} message-pending`, "aria-busy": role === "assistant" ? "true" : undefined },
      h("div", { class: "message-head" }, h("span", { class: "role" }, ROLE_LABELS[role] ?? role)),
      content,
    );
    this.listEl.append(li);
    this.scrollToEnd();
    return { li, content };
  }

  replace(updated) {
    this.messages = this.messages.map((m) => (m.id === updated.id ? updated : m));
    this.render();
  }

  /** A new thread whose history is this one's up to `message` (nothing is copied), opened at once. */
  async fork(message) {
    try {
      const forked = await this.ctx.api.request("POST", `${threadPath(this.thread)}/fork`, {
        body: { message_id: message.id },
      });
      this.ctx.threadCreated(forked);
    } catch (error) {
      this.ctx.fail(error);
    }
  }

  async edit(message) {
    const input = $("edit-input");
    input.value = message.content;
    let updated = null;
    await openDialog($("edit-dialog"), async () => {
      updated = await this.ctx.api.request("PATCH", `${this.messagesPath()}/${encodeURIComponent(message.id)}`, {
        body: { content: input.value },
      });
    });
    if (updated) {
      this.replace(updated);
      this.ctx.messagesChanged();
    }
  }

  async history(message) {
    const dialog = $("history-dialog");
    const list = clear($("history-list"));
    const errorEl = dialog.querySelector(".dialog-error");
    const shown = openDialog(dialog);
    try {
      const edits = await this.ctx.api.get(`${this.messagesPath()}/${encodeURIComponent(message.id)}/edits`);
      list.append(textBlock("Current version", edits.message.content, timeEl(edits.message.edited_at)));
      for (const edit of edits.data.slice().reverse()) {
        list.append(textBlock("Replaced", edit.previous_content, timeEl(edit.edited_at)));
      }
    } catch (error) {
      errorEl.textContent = describeError(error);
      errorEl.hidden = false;
    }
    await shown;
  }

  async remove(message) {
    const done = await confirmAction(
      { title: "Delete this message?", text: message.content.slice(0, 200), confirmLabel: "Delete" },
      () => this.ctx.api.request("DELETE", `${this.messagesPath()}/${encodeURIComponent(message.id)}`),
    );
    if (done) {
      this.messages = this.messages.filter((m) => m.id !== message.id);
      this.render();
      this.ctx.messagesChanged();
    }
  }
}
