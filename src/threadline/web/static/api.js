// The REST client: the UI is a client of the public API like any other. The credential lives in
// sessionStorage (gone when the tab closes) and is sent as X-API-Key (API keys) or a bearer token (user tokens).

const STORAGE_KEY = "threadline.session";

/** An error answered by the API: `message` and `code` are the envelope's, shown to the user verbatim. */
export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

/** The {"error": {message, code, param}} envelope of a failed response, or a plain description of it. */
export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && typeof body === "object" ? body.error : null;
  if (error && typeof error === "object" && typeof error.message === "string") {
    return new ApiError(response.status, error.message, error.code ?? null, error.param ?? null);
  }
  return new ApiError(response.status, `HTTP ${response.status} ${response.statusText || ""}`.trim());
}

/**
 * The error carried by a streamed event, in any of its shapes: `response.failed` ({response: {error}}),
 * an envelope ({error: {message, code}}), or the Responses API's flat `error` event ({type: "error", message}).
 */
export function errorOfEvent(data) {
  let error = data && (data.error || (data.response && data.response.error));
  if (!error && data && data.type === "error") error = data;
  if (error && typeof error === "object") {
    return new ApiError(0, String(error.message ?? "The response failed."), error.code ?? null, error.param ?? null);
  }
  return new ApiError(0, typeof error === "string" ? error : "The response failed.");
}

/**
 * Server-sent events from a fetch body (EventSource cannot POST or send headers). Follows the SSE framing:
 * `event:` and `data:` fields (multi-line data joined with "\n"), comments start with ":", a blank line
 * dispatches. Yields {event, data} with data as the raw string.
 */
export async function* parseSSE(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "";
  let data = [];
  const dispatch = () => {
    const out = data.length ? { event: event || "message", data: data.join("\n") } : null;
    event = "";
    data = [];
    return out;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      // A chunk ending in "\r" may be the first half of "\r\n": keep it until the next chunk decides.
      const holdCR = buffer.endsWith("\r");
      const text = holdCR ? buffer.slice(0, -1) : buffer;
      const lines = text.split(/\r\n|\r|\n/);
      buffer = lines.pop() + (holdCR ? "\r" : "");
      for (const line of lines) {
        if (line === "") {
          const out = dispatch();
          if (out) yield out;
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "event") event = value;
          else if (field === "data") data.push(value);
        }
      }
    }
    const last = buffer.replace(/\r$/, "");
    if (last.startsWith("data:")) data.push(last.slice(5).replace(/^ /, ""));
    const out = dispatch();
    if (out) yield out;
  } finally {
    reader.releaseLock();
  }
}

export class Api {
  constructor(storage = window.sessionStorage) {
    this.storage = storage;
    this.session = null;
    try {
      this.session = JSON.parse(storage.getItem(STORAGE_KEY) || "null");
    } catch {
      this.session = null;
    }
  }

  get signedIn() {
    return Boolean(this.session && this.session.secret);
  }

  /** kind: "api_key" | "token". */
  signIn(kind, secret) {
    this.session = { kind, secret, organizationId: null };
    this.save();
  }

  setOrganization(organizationId) {
    this.session.organizationId = organizationId || null;
    this.save();
  }

  forget() {
    this.session = null;
    this.storage.removeItem(STORAGE_KEY);
  }

  save() {
    this.storage.setItem(STORAGE_KEY, JSON.stringify(this.session));
  }

  headers(extra = {}) {
    const headers = { Accept: "application/json", ...extra };
    if (this.session && this.session.secret) {
      if (this.session.kind === "api_key") headers["X-API-Key"] = this.session.secret;
      else headers.Authorization = `Bearer ${this.session.secret}`;
    }
    return headers;
  }

  /** The organization to name explicitly: only when a user token spans several (an API key implies one). */
  get organizationId() {
    return (this.session && this.session.organizationId) || null;
  }

  url(path, query = {}) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
    }
    return url;
  }

  /**
   * One JSON request. GET/DELETE name the organization in the query, the others in the body.
   * Throws ApiError with the API's own message and code when the answer is not 2xx.
   */
  async request(method, path, { query = {}, body } = {}) {
    const org = this.organizationId;
    const sendsBody = method !== "GET" && method !== "DELETE";
    const q = { ...query };
    let payload = body;
    if (org && !sendsBody) q.organization_id = org;
    if (org && sendsBody) payload = { ...(body || {}), organization_id: org };
    const init = { method, headers: this.headers(payload !== undefined ? { "Content-Type": "application/json" } : {}) };
    if (payload !== undefined) init.body = JSON.stringify(payload);
    const response = await fetch(this.url(path, q), init);
    if (!response.ok) throw await errorFrom(response);
    if (response.status === 204) return null;
    return response.json();
  }

  get(path, query) {
    return this.request("GET", path, { query });
  }

  /** GET a file (an export) and hand it to the browser as a download named `filename`. */
  async download(path, filename) {
    const org = this.organizationId;
    const response = await fetch(this.url(path, org ? { organization_id: org } : {}), { headers: this.headers() });
    if (!response.ok) throw await errorFrom(response);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = filename;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  }

  /** POST a file as the body itself (an import), with the file's own media type; answers the JSON result. */
  async upload(path, file, contentType) {
    const org = this.organizationId;
    const response = await fetch(this.url(path, org ? { organization_id: org } : {}), {
      method: "POST",
      headers: this.headers({ "Content-Type": contentType }),
      body: file,
    });
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }

  /** POST /v1/auth/token: email + password → a bearer token. */
  async login(email, password) {
    const response = await fetch(this.url("/v1/auth/token"), {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify({ email, password }),
    });
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }

  /**
   * POST a streaming request and yield its server-sent events. An error status throws the API's error; a JSON
   * answer to a streaming request (a server that ignores "stream") becomes one "response.completed" event.
   */
  async *stream(path, body, signal) {
    const org = this.organizationId;
    const payload = org ? { ...body, organization_id: org } : body;
    const response = await fetch(this.url(path), {
      method: "POST",
      headers: this.headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(payload),
      signal,
    });
    if (!response.ok) throw await errorFrom(response);
    const type = response.headers.get("content-type") || "";
    if (!type.includes("text/event-stream") || !response.body) {
      const json = await response.json();
      yield { event: "response.completed", data: JSON.stringify({ type: "response.completed", response: json }) };
      return;
    }
    yield* parseSSE(response.body);
  }
}
