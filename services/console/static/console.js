// Job console: a cross-origin browser client of the API and the realtime service.
// No build step, no dependencies. The access token lives in sessionStorage (this
// tab only, gone when it closes); the WebSocket gets a single-use ticket in its
// URL, never the token.
"use strict";

(() => {
  const config = window.CONSOLE_CONFIG || {};
  const API = config.apiUrl || `${location.protocol}//${location.hostname}:8000`;
  const REALTIME = config.realtimeUrl || `ws://${location.hostname}:8001/ws`;
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  // How far along a state is: an HTTP answer never moves a job back (a POST's
  // "queued" can arrive after the socket's job.started). Only an event can, for
  // a retry's job.requeued.
  const RANK = { queued: 0, running: 1 };
  const rank = (state) => (FINAL.has(state) ? 2 : RANK[state] ?? 0);
  const STORE = "console.session";

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    email: null,
    jobs: new Map(),
    lastEventId: null,
    socket: null,
    retryDelay: 500,
    retryTimer: null,
    pingTimer: null,
    connections: 0,
    passwordMinLength: null,
  };

  class ApiError extends Error {}

  // --- HTTP -------------------------------------------------------------------

  async function api(path, { method = "GET", json, form } = {}) {
    const headers = {};
    let body;
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = new URLSearchParams(form);
    }
    let response;
    try {
      response = await fetch(API + path, { method, headers, body, mode: "cors" });
    } catch (error) {
      throw new ApiError(`Could not reach the API at ${API} (network error or CORS refused).`);
    }
    if (response.status === 401 && state.token) {
      logout("Your session has expired; log in again.");
      throw new ApiError("Not signed in.");
    }
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const detail = data && (data.detail || data.title);
      throw new ApiError(typeof detail === "string" ? detail : `HTTP ${response.status}`);
    }
    return data;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  async function guarded(action) {
    showError("");
    try {
      await action();
    } catch (error) {
      showError(error instanceof ApiError ? error.message : String(error));
    }
  }

  // --- sign in ----------------------------------------------------------------

  // The password rule lives in the API (its PASSWORD_MIN_LENGTH setting), which
  // publishes it as the register body's `minLength` in /openapi.json. Without
  // it (docs turned off, API down) the hint stays general and the API decides.
  async function loadPasswordRule() {
    try {
      const response = await fetch(`${API}/openapi.json`, { mode: "cors" });
      const schema = await response.json();
      const body = schema.paths["/v1/auth/register"].post.requestBody;
      const name = body.content["application/json"].schema.$ref.split("/").pop();
      const minimum = schema.components.schemas[name].properties.password.minLength;
      if (Number.isInteger(minimum) && minimum > 0) state.passwordMinLength = minimum;
    } catch (error) {
      return;
    }
    $("password-hint").textContent =
      `New accounts: at least ${state.passwordMinLength} characters.`;
  }

  function tooShort(password) {
    const minimum = state.passwordMinLength;
    return minimum !== null && password.length < minimum;
  }

  async function signIn(email, password, isSignup) {
    if (isSignup && tooShort(password)) {
      $("password").setAttribute("aria-invalid", "true");
      $("password").focus();
      throw new ApiError(
        `The password must be at least ${state.passwordMinLength} characters long.`
      );
    }
    $("password").removeAttribute("aria-invalid");
    if (isSignup) await api("/v1/auth/register", { method: "POST", json: { email, password } });
    const tokens = await api("/v1/auth/token", {
      method: "POST",
      form: { username: email, password },
    });
    $("password").value = ""; // signed in: the password has no business in the page
    state.token = tokens.access_token;
    state.email = email;
    sessionStorage.setItem(STORE, JSON.stringify({ token: state.token, email }));
    await enter();
  }

  async function enter() {
    $("auth").hidden = true;
    $("workspace").hidden = false;
    $("who").hidden = false;
    $("who-email").textContent = state.email;
    connect();
    const page = await api("/v1/jobs?limit=20");
    for (const job of page.items.reverse()) upsert(job);
    $("steps").focus();
  }

  function logout(message) {
    state.token = null;
    state.email = null;
    sessionStorage.removeItem(STORE);
    disconnect();
    state.jobs.clear();
    state.lastEventId = null;
    $("jobs").replaceChildren();
    $("jobs-empty").hidden = false;
    $("workspace").hidden = true;
    $("who").hidden = true;
    $("auth-form").reset(); // the next person at this screen sees no one's email
    $("auth").hidden = false;
    showError(message || "");
    $("email").focus();
  }

  // --- jobs -------------------------------------------------------------------

  function upsert(incoming, { fromEvent = false } = {}) {
    const known = state.jobs.get(incoming.id);
    if (!known) {
      state.jobs.set(incoming.id, incoming);
    } else if (!FINAL.has(known.state) || FINAL.has(incoming.state)) {
      // Never move a finished job back, nor its bar backwards (events and
      // HTTP answers can cross on the wire).
      const backwards = !fromEvent && rank(incoming.state) < rank(known.state);
      Object.assign(known, incoming, {
        state: backwards ? known.state : incoming.state,
        progress: Math.max(known.progress, incoming.progress),
      });
    }
    render(state.jobs.get(incoming.id), known);
  }

  function short(id) {
    return id.slice(0, 8);
  }

  function announce(job, text) {
    $("announcer").textContent = `${job.kind} ${short(job.id)}: ${text}`;
  }

  function render(job, previous) {
    let item = document.querySelector(`li[data-job-id="${job.id}"]`);
    const before = item ? { state: item.dataset.state, progress: Number(item.dataset.progress) } : null;
    if (!item) {
      item = $("job-template").content.firstElementChild.cloneNode(true);
      item.dataset.jobId = job.id;
      item.querySelector(".kind").textContent = job.kind;
      item.querySelector(".job-id").textContent = short(job.id);
      item.querySelector("progress").setAttribute("aria-label", `Progress of ${job.kind} ${short(job.id)}`);
      const cancel = item.querySelector(".cancel");
      cancel.setAttribute("aria-label", `Cancel ${job.kind} ${short(job.id)}`);
      cancel.addEventListener("click", () => guarded(() => cancelJob(job.id)));
      $("jobs").prepend(item);
      $("jobs-empty").hidden = true;
    }
    const progress = job.progress || 0;
    item.dataset.state = job.state;
    item.dataset.progress = String(progress);
    item.querySelector(".state").textContent = job.state;
    item.querySelector("progress").value = progress;
    item.querySelector(".percent").textContent = `${progress}%`;
    item.querySelector(".cancel").hidden = FINAL.has(job.state);
    renderResult(item.querySelector(".result"), job);
    if (before && before.state !== job.state) announce(job, job.state);
    else if (before && Math.floor(progress / 25) > Math.floor(before.progress / 25)) {
      announce(job, `${progress}%`);
    }
  }

  function cell(tag, text, className) {
    const node = document.createElement(tag);
    node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function renderResult(container, job) {
    if (container.dataset.rendered === job.state) return;
    container.dataset.rendered = job.state;
    container.replaceChildren();
    if (job.state === "failed" && job.error) {
      container.append(cell("p", `Error: ${job.error}`, "error-text"));
    } else if (job.state === "succeeded" && job.kind === "report.jobs_summary" && job.result) {
      container.append(reportTable(job.result));
    } else if (job.state === "succeeded" && job.result != null) {
      const label = `Result of ${job.kind} ${short(job.id)}`;
      container.append(valueView(job.result, 0, label));
    }
  }

  // A result for people: objects as definition lists (nested ones nested), flat
  // lists inline; deeper than this, or large, it falls back to indented JSON.
  const MAX_DEPTH = 2;
  const MAX_ENTRIES = 50;

  function isScalar(value) {
    return value === null || typeof value !== "object";
  }

  function valueView(value, depth, label) {
    if (isScalar(value)) return cell("span", value === null ? "–" : String(value), "value");
    if (Array.isArray(value) && value.every(isScalar) && value.length <= MAX_ENTRIES) {
      return cell("span", value.length ? value.map(String).join(", ") : "none", "value");
    }
    const entries = Array.isArray(value) ? [...value.entries()] : Object.entries(value);
    if (depth >= MAX_DEPTH || entries.length > MAX_ENTRIES) {
      const pre = cell("pre", JSON.stringify(value, null, 2), "json");
      if (label) pre.setAttribute("aria-label", label);
      return pre;
    }
    const list = document.createElement("dl");
    list.className = "kv";
    if (label) list.setAttribute("aria-label", label);
    for (const [key, item] of entries) {
      const term = cell("dt", Array.isArray(value) ? `#${Number(key) + 1}` : String(key));
      const description = document.createElement("dd");
      description.append(valueView(item, depth + 1));
      list.append(term, description);
    }
    return list;
  }

  function reportTable(result) {
    const table = document.createElement("table");
    const noun = result.total === 1 ? "job" : "jobs";
    table.append(cell("caption", `Jobs summary: ${result.total} other ${noun}`));
    const columns = ["Kind", "Total", "Succeeded", "Failed", "Cancelled", "Median (s)", "p95 (s)"];
    const head = document.createElement("tr");
    for (const name of columns) head.append(Object.assign(cell("th", name), { scope: "col" }));
    table.append(document.createElement("thead"));
    table.tHead.append(head);
    const body = table.createTBody();
    for (const [kind, stats] of Object.entries(result.kinds || {})) {
      const row = document.createElement("tr");
      row.append(Object.assign(cell("th", kind), { scope: "row" }));
      const byState = stats.by_state || {};
      const durations = stats.duration_seconds || {};
      for (const value of [
        stats.total, byState.succeeded || 0, byState.failed || 0, byState.cancelled || 0,
        durations.p50 ?? "–", durations.p95 ?? "–",
      ]) {
        row.append(cell("td", String(value), "num"));
      }
      body.append(row);
    }
    // On a narrow screen the table scrolls inside its own box, not the page;
    // focusable so a keyboard can scroll it too.
    const region = document.createElement("div");
    region.className = "table-scroll";
    region.tabIndex = 0;
    region.setAttribute("role", "region");
    region.setAttribute("aria-label", table.caption.textContent);
    region.append(table);
    return region;
  }

  async function startJob(kind, params) {
    const job = await api("/v1/jobs", { method: "POST", json: { kind, params } });
    upsert(job);
    announce(job, "queued");
  }

  async function cancelJob(id) {
    upsert(await api(`/v1/jobs/${id}/cancel`, { method: "POST" }));
  }

  // --- realtime ---------------------------------------------------------------

  function setConnection(status, text) {
    const node = $("connection");
    node.dataset.state = status;
    node.dataset.connections = String(state.connections);
    $("connection-text").textContent = text;
  }

  async function connect() {
    clearTimeout(state.retryTimer);
    if (!state.token) return;
    setConnection("connecting", "Connecting…");
    let ticket;
    try {
      ticket = (await api("/v1/realtime/ticket", { method: "POST" })).ticket;
    } catch (error) {
      scheduleReconnect();
      return;
    }
    if (!state.token) return;
    // A fresh single-use ticket for every connection; resume from the last event seen.
    const query = new URLSearchParams({ ticket });
    if (state.lastEventId) query.set("last_event_id", state.lastEventId);
    const socket = new WebSocket(`${REALTIME}?${query}`);
    state.socket = socket;
    socket.addEventListener("message", (message) => onMessage(socket, message));
    socket.addEventListener("close", (event) => onClose(socket, event));
  }

  function onMessage(socket, message) {
    const frame = JSON.parse(message.data);
    if (frame.type === "hello") {
      state.connections += 1;
      state.retryDelay = 500;
      const resumed = state.connections > 1 ? " (resumed)" : "";
      setConnection("live", `Live${resumed}`);
      const idle = (frame.limits && frame.limits.idle_timeout_seconds) || 60;
      clearInterval(state.pingTimer);
      state.pingTimer = setInterval(() => {
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "ping" }));
      }, Math.max(1, idle / 3) * 1000);
    } else if (frame.id && frame.job_id) {
      state.lastEventId = frame.id;
      onEvent(frame);
    }
  }

  function onEvent(event) {
    const job = state.jobs.get(event.job_id);
    if (!job) {
      // A job started elsewhere (another tab, the API directly): fetch it whole.
      guarded(async () => upsert(await api(`/v1/jobs/${event.job_id}`)));
      return;
    }
    const data = event.data || {};
    const update = { ...job };
    if (data.state) update.state = data.state;
    if (typeof data.progress === "number") update.progress = data.progress;
    if (event.type === "job.progress" && !FINAL.has(update.state)) update.state = "running";
    if ("result" in data) update.result = data.result;
    if ("error" in data) update.error = data.error;
    upsert(update, { fromEvent: true });
  }

  function onClose(socket, event) {
    if (state.socket !== socket) return;
    state.socket = null;
    clearInterval(state.pingTimer);
    if (!state.token) return;
    if (event.code === 1008) {
      setConnection("offline", "Refused");
      showError(`The realtime service refused the connection: ${event.reason || "policy"}`);
      return;
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    const delay = state.retryDelay;
    state.retryDelay = Math.min(state.retryDelay * 2, 8000);
    setConnection("connecting", `Reconnecting in ${(delay / 1000).toFixed(1)} s…`);
    state.retryTimer = setTimeout(connect, delay);
  }

  function disconnect() {
    clearTimeout(state.retryTimer);
    clearInterval(state.pingTimer);
    const socket = state.socket;
    state.socket = null;
    state.connections = 0;
    if (socket) socket.close(1000, "logged out");
    setConnection("offline", "Not connected");
  }

  // --- wiring -----------------------------------------------------------------

  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const isSignup = event.submitter && event.submitter.value === "signup";
    const form = event.currentTarget;
    guarded(() => signIn(form.email.value.trim(), form.password.value, isSignup));
  });
  $("countdown-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const params = { steps: Number(form.steps.value), interval: Number(form.interval.value) };
    guarded(() => startJob("demo.countdown", params));
  });
  $("report-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(() => startJob("report.jobs_summary", {}));
  });
  $("logout").addEventListener("click", () => logout());
  loadPasswordRule();

  const saved = JSON.parse(sessionStorage.getItem(STORE) || "null");
  if (saved && saved.token) {
    state.token = saved.token;
    state.email = saved.email;
    guarded(enter);
  }
})();
