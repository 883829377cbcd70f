// The composer: sends one turn to POST /v1/model/response with "stream": true and renders the answer as its
// server-sent events arrive (response.output_text.delta … response.completed | response.failed).

import { errorOfEvent } from "./api.js";
import { describeError } from "./dialogs.js";
import { $, clear, h } from "./dom.js";

const CLOSED_HINTS = {
  locked: "This thread is locked: unlock it to continue the conversation.",
  archived: "This thread is archived: it is read-only.",
};

export class Composer {
  constructor(ctx, messages) {
    this.ctx = ctx;
    this.messages = messages;
    this.thread = null;
    this.controller = null;
    this.form = $("composer");
    this.input = $("composer-input");
    this.sendButton = $("send");
    this.stopButton = $("stop");
    this.modelPicker = $("model-picker");
    this.contextMode = $("context-mode");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.send();
      }
    });
    this.stopButton.addEventListener("click", () => this.controller && this.controller.abort());
  }

  /** Fill the model picker from GET /v1/models; without that endpoint the server's default model is used. */
  async loadModels() {
    const label = $("model-picker-label");
    const previous = this.modelPicker.value;
    try {
      const list = await this.ctx.api.get("/v1/models");
      const ids = (list.data || []).map((m) => m.id).filter(Boolean);
      clear(this.modelPicker).append(h("option", { value: "" }, "Server default"));
      for (const id of ids) this.modelPicker.append(h("option", { value: id }, id));
      if (ids.includes(previous)) this.modelPicker.value = previous;
      label.hidden = ids.length === 0;
    } catch {
      label.hidden = true;
    }
  }

  open(thread) {
    this.thread = thread;
    const closed = thread.deleted_at ? "This thread is deleted." : CLOSED_HINTS[thread.state];
    this.input.disabled = Boolean(closed) || this.streaming;
    this.sendButton.disabled = Boolean(closed) || this.streaming;
    this.input.placeholder = closed ? "" : "Write a message… (Ctrl+Enter to send)";
    const note = $("composer-note");
    note.textContent = closed || "";
    note.hidden = !closed;
  }

  get streaming() {
    return this.controller !== null;
  }

  async send() {
    const text = this.input.value;
    if (!this.thread || this.streaming || !text.trim()) return;
    const thread = this.thread;
    const body = { thread: thread.id, inputs: [{ role: "user", texts: [{ text }] }], stream: true };
    if (this.modelPicker.value) body.model = this.modelPicker.value;
    if (this.contextMode.value) body.thread_context_mode = this.contextMode.value;

    this.controller = new AbortController();
    this.setStreaming(true);
    this.messages.appendPending("user", text);
    const answer = this.messages.appendPending("assistant", "");
    let written = "";
    let completed = false;
    try {
      for await (const event of this.ctx.api.stream("/v1/model/response", body, this.controller.signal)) {
        let data = null;
        try {
          data = JSON.parse(event.data);
        } catch {
          continue; // e.g. "[DONE]"
        }
        if (event.event === "response.output_text.delta" && typeof data.delta === "string") {
          written += data.delta;
          answer.content.textContent = written;
          this.messages.scrollToEnd();
        } else if (event.event === "response.completed" || event.event === "response.incomplete") {
          // Incomplete (e.g. the output token limit) is still a saved turn: the reload below shows it.
          completed = true;
        } else if (event.event === "response.failed" || event.event === "error" || (data && data.error)) {
          throw errorOfEvent(data);
        }
      }
      if (!completed) throw new Error("The answer stopped before the response completed.");
      this.input.value = "";
    } catch (error) {
      answer.li.classList.add("message-failed");
      const note = error.name === "AbortError" ? "Stopped." : describeError(error);
      answer.li.append(h("p", { class: "message-error" }, note));
      if (error.name !== "AbortError") this.ctx.fail(error);
    } finally {
      answer.li.removeAttribute("aria-busy");
      this.controller = null;
      this.setStreaming(false);
    }
    // What the server stored is the truth: show it (with real ids), unless the user moved to another thread.
    if (completed && this.thread && this.thread.id === thread.id) {
      await this.messages.open(thread);
      await this.ctx.refreshThread(thread);
    }
  }

  setStreaming(on) {
    this.stopButton.hidden = !on;
    this.sendButton.disabled = on;
    this.input.disabled = on;
    if (!on && this.thread) this.open(this.thread);
    if (!on) this.input.focus();
  }
}
