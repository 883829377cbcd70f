// Entry point: sign-in / sign-out, who am I, the organization picker, and the wiring between the panels.

import { Api, ApiError } from "./api.js";
import { Composer } from "./composer.js";
import { $, busy, clear, h } from "./dom.js";
import { MessagesView } from "./messages.js";
import { ThreadHeader, ThreadList } from "./threads.js";

const api = new Api();

const notice = {
  el: $("notice"),
  text: $("notice-text"),
  /** The API's error, verbatim: its message, then its code. */
  show(error) {
    clear(this.text).append(error && error.message ? error.message : String(error));
    if (error && error.code) this.text.append(" ", h("code", {}, error.code));
    this.el.hidden = false;
  },
  hide() {
    this.el.hidden = true;
    clear(this.text);
  },
};
$("notice-close").addEventListener("click", () => notice.hide());

const ctx = {
  api,
  /** Report an error; a 401 means the credential stopped working, so go back to the sign-in form. */
  fail(error) {
    if (error instanceof ApiError && error.status === 401 && api.signedIn) {
      api.forget();
      showSignIn();
    }
    notice.show(error);
  },
  /** Say something that is not an error (an import's result). */
  inform(text) {
    notice.show({ message: text });
  },
  openThread: (thread) => openThread(thread),
  threadCreated: (thread) => {
    threadList.upsert(thread, true);
    return openThread(thread);
  },
  threadChanged: (thread) => threadChanged(thread),
  threadDeleted: (thread) => threadDeleted(thread),
  refreshThread: (thread) => refreshThread(thread),
  messagesChanged: () => current && refreshThread(current),
};

const threadList = new ThreadList(ctx);
const header = new ThreadHeader(ctx);
const messages = new MessagesView(ctx);
const composer = new Composer(ctx, messages);
let current = null;

function openThread(thread) {
  current = thread;
  notice.hide();
  threadList.select(thread.id);
  $("thread-empty").hidden = true;
  $("thread-body").hidden = false;
  header.show(thread);
  composer.open(thread);
  window.history.replaceState(null, "", `#${encodeURIComponent(thread.id)}`);
  // The list's copy may be stale (another client wrote meanwhile): fetch the thread along with its messages.
  return Promise.all([messages.open(thread), refreshThread(thread)]);
}

function closeThread() {
  current = null;
  threadList.select(null);
  $("thread-body").hidden = true;
  $("thread-empty").hidden = false;
  window.history.replaceState(null, "", window.location.pathname);
}

function threadChanged(thread) {
  threadList.upsert(thread);
  if (current && current.id === thread.id) {
    current = thread;
    header.show(thread);
    composer.open(thread);
  }
}

function threadDeleted(thread) {
  threadList.remove(thread.id);
  if (current && current.id === thread.id) closeThread();
  if (threadList.filters.deleted.checked) threadList.reload();
}

async function refreshThread(thread) {
  try {
    threadChanged(await api.get(`/v1/threads/${encodeURIComponent(thread.id)}`));
  } catch (error) {
    ctx.fail(error);
  }
}

function showSignIn() {
  current = null;
  threadList.reset();
  closeThread();
  $("workspace").hidden = true;
  $("session").hidden = true;
  $("sign-in").hidden = false;
}

/** After a credential is stored: who is this, which organization, then the threads. */
async function enter() {
  const me = await api.get("/v1/me");
  const orgs = me.organizations || [];
  const picker = $("org-picker");
  clear(picker);
  if (api.session.kind === "token" && orgs.length > 1) {
    for (const org of orgs) picker.append(h("option", { value: org.id }, org.name));
    const chosen = orgs.some((o) => o.id === api.organizationId) ? api.organizationId : orgs[0].id;
    api.setOrganization(chosen);
    picker.value = chosen;
    $("org-picker-label").hidden = false;
  } else {
    api.setOrganization(null);
    $("org-picker-label").hidden = true;
  }
  const how = me.auth_method === "api_key" ? "API key" : "signed in";
  const where = orgs.length === 1 ? ` · ${orgs[0].name}` : "";
  $("whoami").textContent = `${me.user.email}${where} · ${how}`;
  $("sign-in").hidden = true;
  $("session").hidden = false;
  $("workspace").hidden = false;
  notice.hide();
  await Promise.all([threadList.reload(), composer.loadModels(), reopenFromHash()]);
}

/** The open thread's id lives in the URL fragment, so a reload comes back to it. */
async function reopenFromHash() {
  const id = decodeURIComponent(window.location.hash.slice(1));
  if (!id) return;
  try {
    await openThread(await api.get(`/v1/threads/${encodeURIComponent(id)}`));
  } catch {
    closeThread();
  }
}

async function signInWith(form, obtain) {
  const button = form.querySelector("[type=submit]");
  await busy(button, async () => {
    try {
      await obtain();
      await enter();
      form.reset();
    } catch (error) {
      api.forget();
      showSignIn();
      notice.show(error);
    }
  });
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  signInWith(event.currentTarget, async () => api.signIn("api_key", key));
});

$("password-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const email = $("email").value.trim();
  const password = $("password").value;
  signInWith(event.currentTarget, async () => {
    const token = await api.login(email, password);
    api.signIn("token", token.access_token);
  });
});

$("sign-out").addEventListener("click", async (event) => {
  await busy(event.currentTarget, async () => {
    if (api.session && api.session.kind === "token") {
      try {
        await api.request("POST", "/v1/auth/logout");
      } catch {
        // The token may have expired already: signing out locally is what matters.
      }
    }
  });
  api.forget();
  notice.hide();
  showSignIn();
});

$("org-picker").addEventListener("change", async (event) => {
  api.setOrganization(event.currentTarget.value);
  closeThread();
  await Promise.all([threadList.reload(), composer.loadModels()]);
});

if (api.signedIn) {
  enter().catch((error) => {
    api.forget();
    showSignIn();
    notice.show(error);
  });
} else {
  showSignIn();
}
