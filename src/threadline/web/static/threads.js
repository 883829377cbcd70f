// The thread list (newest first, keyset "Load more", filters) and the open thread's header and actions.

import { confirmAction, openDialog } from "./dialogs.js";
import { $, busy, clear, h, timeEl } from "./dom.js";

const PAGE_SIZE = 20;
const STATE_LABELS = { open: "Open", locked: "Locked", archived: "Archived" };

export function threadTitle(thread) {
  return thread.title && thread.title.trim() ? thread.title : "Untitled";
}

export function threadPath(thread) {
  return `/v1/threads/${encodeURIComponent(thread.id ?? thread)}`;
}

/** The small markers shown next to a thread's title: state, pinned, hidden, deleted. */
export function threadBadges(thread) {
  const badges = [h("span", { class: `badge badge-${thread.state}` }, STATE_LABELS[thread.state] ?? thread.state)];
  if (thread.is_pinned) badges.push(h("span", { class: "badge badge-pinned" }, "Pinned"));
  if (!thread.visible_in_ui) badges.push(h("span", { class: "badge badge-hidden" }, "Hidden"));
  if (thread.deleted_at) badges.push(h("span", { class: "badge badge-deleted" }, "Deleted"));
  return badges;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export class ThreadList {
  constructor(ctx) {
    this.ctx = ctx;
    this.threads = [];
    this.cursor = null;
    this.hasMore = false;
    this.selectedId = null;
    this.generation = 0;
    this.listEl = $("thread-list");
    this.emptyEl = $("thread-list-empty");
    this.moreButton = $("threads-more");
    this.filters = { pinned: $("filter-pinned"), hidden: $("filter-hidden"), deleted: $("filter-deleted") };
    for (const box of Object.values(this.filters)) box.addEventListener("change", () => this.reload());
    this.moreButton.addEventListener("click", () => busy(this.moreButton, () => this.load(false)));
    $("new-thread").addEventListener("click", (event) => busy(event.currentTarget, () => this.create()));
    const picker = $("import-file");
    $("import-threads").addEventListener("click", () => picker.click());
    picker.addEventListener("change", () => busy($("import-threads"), () => this.importFile(picker)));
  }

  /** An export (.jsonl) or ChatGPT's conversations.json: imported, then the result said and the list reloaded. */
  async importFile(picker) {
    const file = picker.files && picker.files[0];
    picker.value = "";
    if (!file) return;
    const type = file.name.toLowerCase().endsWith(".json") ? "application/json" : "application/x-ndjson";
    try {
      const result = await this.ctx.api.upload("/v1/threads/import", file, type);
      const said = `Imported ${file.name}: ${result.created} created, ${result.skipped} already there, ${result.failed} failed.`;
      const details = [...result.errors.map((e) => e.message), ...result.warnings.flatMap((w) => w.messages)];
      this.ctx.inform(details.length ? `${said} ${details.slice(0, 5).join(" · ")}` : said);
      await this.reload();
    } catch (error) {
      this.ctx.fail(error);
    }
  }

  query() {
    return {
      limit: PAGE_SIZE,
      order: "desc",
      is_pinned: this.filters.pinned.checked ? "true" : undefined,
      visible_in_ui: this.filters.hidden.checked ? "false" : undefined,
      include_deleted: this.filters.deleted.checked ? "true" : undefined,
    };
  }

  matches(thread) {
    if (this.filters.pinned.checked && !thread.is_pinned) return false;
    if (this.filters.hidden.checked === thread.visible_in_ui) return false;
    return !thread.deleted_at || this.filters.deleted.checked;
  }

  reset() {
    this.generation += 1;
    this.threads = [];
    this.cursor = null;
    this.hasMore = false;
    this.selectedId = null;
    this.render();
  }

  async reload() {
    this.cursor = null;
    await this.load(true);
  }

  /** One page; `after` the last id shown, so pages never overlap or skip when threads are added meanwhile. */
  async load(fresh) {
    const generation = fresh ? ++this.generation : this.generation;
    try {
      const page = await this.ctx.api.get("/v1/threads", { ...this.query(), after: fresh ? undefined : this.cursor });
      if (generation !== this.generation) return; // the filters changed while this page was on its way
      this.threads = fresh ? page.data : this.threads.concat(page.data);
      this.cursor = page.last_id ?? this.cursor;
      this.hasMore = Boolean(page.has_more);
      this.render();
    } catch (error) {
      this.ctx.fail(error);
    }
  }

  async create() {
    try {
      const thread = await this.ctx.api.request("POST", "/v1/threads", { body: {} });
      this.upsert(thread, true);
      this.ctx.openThread(thread);
    } catch (error) {
      this.ctx.fail(error);
    }
  }

  upsert(thread, isNew = false) {
    const index = this.threads.findIndex((t) => t.id === thread.id);
    if (index >= 0) this.threads[index] = thread;
    else if (isNew && this.matches(thread)) this.threads.unshift(thread);
    this.render();
  }

  remove(threadId) {
    this.threads = this.threads.filter((t) => t.id !== threadId);
    if (this.selectedId === threadId) this.selectedId = null;
    this.render();
  }

  select(threadId) {
    this.selectedId = threadId;
    for (const button of this.listEl.querySelectorAll("button.thread-item")) {
      if (button.dataset.id === threadId) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  render() {
    clear(this.listEl);
    for (const thread of this.threads) {
      const button = h(
        "button",
        {
          type: "button",
          class: "thread-item",
          dataset: { id: thread.id },
          "aria-current": thread.id === this.selectedId ? "true" : undefined,
          onClick: () => this.ctx.openThread(thread),
        },
        h("span", { class: "thread-item-title" }, threadTitle(thread)),
        h(
          "span",
          { class: "thread-item-meta" },
          threadBadges(thread),
          h("span", { class: "count" }, plural(thread.message_count, "message")),
          timeEl(thread.last_message_at),
        ),
      );
      this.listEl.append(h("li", {}, button));
    }
    this.emptyEl.hidden = this.threads.length > 0;
    this.moreButton.hidden = !this.hasMore;
  }
}

/** The open thread: title, badges, and the rename / pin / lock / archive / delete actions. */
export class ThreadHeader {
  constructor(ctx) {
    this.ctx = ctx;
    this.thread = null;
    this.buttons = {
      rename: $("act-rename"),
      pin: $("act-pin"),
      lock: $("act-lock"),
      archive: $("act-archive"),
      delete: $("act-delete"),
      export: $("act-export"),
    };
    const on = (name, action) =>
      this.buttons[name].addEventListener("click", async () => {
        try {
          await action();
        } catch (error) {
          this.ctx.fail(error);
        }
      });
    on("rename", () => this.rename());
    on("pin", () => this.patch(this.buttons.pin, { is_pinned: !this.thread.is_pinned }));
    on("lock", () => this.patch(this.buttons.lock, { state: this.thread.state === "locked" ? "open" : "locked" }));
    on("archive", () => this.archive());
    on("delete", () => this.remove());
    on("export", () =>
      busy(this.buttons.export, () => this.ctx.api.download(`${threadPath(this.thread)}/export`, `${this.thread.id}.jsonl`)),
    );
  }

  show(thread) {
    this.thread = thread;
    $("thread-title").textContent = threadTitle(thread);
    clear($("thread-badges")).append(...threadBadges(thread));
    const meta = clear($("thread-meta"));
    meta.append(h("code", {}, thread.id), ` · ${plural(thread.message_count, "message")} · created `);
    meta.append(timeEl(thread.created_at));
    if (thread.last_message_at) meta.append(" · last message ", timeEl(thread.last_message_at));
    if (thread.last_model_used) meta.append(` · ${thread.last_model_used}`);

    const deleted = Boolean(thread.deleted_at);
    const { pin, lock, archive, rename } = this.buttons;
    pin.textContent = thread.is_pinned ? "Unpin" : "Pin";
    pin.setAttribute("aria-pressed", String(Boolean(thread.is_pinned)));
    lock.textContent = thread.state === "locked" ? "Unlock" : "Lock";
    lock.disabled = deleted || thread.state === "archived";
    archive.disabled = deleted || thread.state === "archived";
    rename.disabled = deleted;
    pin.disabled = deleted;
    this.buttons.delete.disabled = deleted;
    this.buttons.export.disabled = deleted;
  }

  async patch(button, changes) {
    const thread = await busy(button, () =>
      this.ctx.api.request("PATCH", threadPath(this.thread), { body: changes }),
    );
    this.ctx.threadChanged(thread);
  }

  async rename() {
    const input = $("rename-input");
    input.value = this.thread.title ?? "";
    const path = `${threadPath(this.thread)}/rename`;
    let renamed = null;
    await openDialog($("rename-dialog"), async () => {
      const title = input.value.trim();
      renamed = await this.ctx.api.request("PUT", path, { body: { title: title || null } });
    });
    if (renamed) this.ctx.threadChanged(renamed);
  }

  async archive() {
    let archived = null;
    await confirmAction(
      {
        title: "Archive this thread?",
        text: `“${threadTitle(this.thread)}” becomes read-only for good: archiving cannot be undone.`,
        confirmLabel: "Archive",
      },
      async () => {
        archived = await this.ctx.api.request("PATCH", threadPath(this.thread), { body: { state: "archived" } });
      },
    );
    if (archived) this.ctx.threadChanged(archived);
  }

  async remove() {
    const thread = this.thread;
    const done = await confirmAction(
      {
        title: "Delete this thread?",
        text: `“${threadTitle(thread)}” and its messages will be deleted.`,
        confirmLabel: "Delete",
      },
      () => this.ctx.api.request("DELETE", threadPath(thread)),
    );
    if (done) this.ctx.threadDeleted(thread);
  }
}
