// The hub's API from the page: bearer token in sessionStorage (a tab's login ends with the tab),
// JSON errors turned into exceptions carrying the hub's stable code, and the live stream.

const TOKEN = "demolab.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN);
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch {
    doc = null;
  }
  if (!response.ok) {
    const error = doc?.error ?? {};
    if (response.status === 401 && error.code === "invalid_token") sessionStorage.removeItem(TOKEN);
    throw new ApiError(response.status, error.code ?? "http", error.message ?? text);
  }
  return doc;
}

export async function login(user, password) {
  const doc = await api("/api/v1/auth/login", { method: "POST", body: { user, password } });
  sessionStorage.setItem(TOKEN, doc.token);
  return doc.principal;
}

/** Joins a game with its code: the team's token replaces any login of this tab. */
export async function joinGame(code, team) {
  const doc = await api("/api/v1/games/join", { method: "POST", body: { code, team } });
  sessionStorage.setItem(TOKEN, doc.token);
  return doc;
}

export async function logout() {
  try {
    await api("/api/v1/auth/logout", { method: "POST" });
  } finally {
    sessionStorage.removeItem(TOKEN);
  }
}

/** Who we are: a principal, or `null` when the hub wants a login. */
export async function me() {
  try {
    return await api("/api/v1/auth/me");
  } catch (error) {
    if (error.status !== 401) throw error;
  }
  // No token: the hub may still show its public labs to anyone.
  try {
    await api("/api/v1/labs");
    return { user: "anonymous", role: null, labs: null };
  } catch (error) {
    if (error.status === 401) return null;
    throw error;
  }
}

/**
 * The hub's WebSocket stream of twin changes, reconnecting with a growing pause. `onChange` gets
 * each parsed change; `onStatus` gets "connected" / "reconnecting"; after a reconnect `onResync`
 * is called so views reload what they may have missed.
 */
export function stream({ onChange, onStatus, onResync, filter = {} }) {
  let socket = null;
  let closed = false;
  let pause = 500;
  let opened = false;
  const open = () => {
    const query = new URLSearchParams(filter);
    const bearer = token();
    if (bearer) query.set("token", bearer);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/api/v1/stream?${query}`);
    socket.onopen = () => {
      pause = 500;
      onStatus?.("connected");
      if (opened) onResync?.();
      opened = true;
    };
    socket.onmessage = (event) => {
      const arrived = performance.now();
      let change;
      try {
        change = JSON.parse(event.data);
      } catch {
        return;
      }
      if (change.kind === "lagged") onResync?.();
      else onChange(change, arrived);
    };
    socket.onclose = (event) => {
      if (closed) return;
      // 4001: the token expired or was logged out elsewhere; go on without it.
      if (event.code === 4001) sessionStorage.removeItem(TOKEN);
      onStatus?.("reconnecting");
      setTimeout(open, pause);
      pause = Math.min(pause * 2, 10_000);
    };
  };
  open();
  return () => {
    closed = true;
    socket?.close();
  };
}
