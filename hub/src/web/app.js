// The Demolab web platform: one page, routed on the client. This module owns the session, the
// twins as last seen, the live stream and the router; views render into <main>.

import { api, login, logout, me, stream, ApiError } from "./api.js";
import { lang, setLang, t } from "./i18n.js";
import { overview, screen, loginView } from "./views.js";
import { machineView, protocolView } from "./machine.js";
import { gamesLink, leaderboardScreen, teacherConsole, teamPage } from "./games.js";
import { guidePage } from "./guide.js";

export const app = {
  principal: null,
  kinds: new Map(),
  labs: [],
  twins: new Map(),
  view: null,
};

/** Update-to-paint times: from a stream message's arrival to the frame after its DOM update. */
const perf = { samples: [] };
window.__demolabPerf = {
  reset() { perf.samples = []; },
  get count() { return perf.samples.length; },
  summary() {
    const sorted = [...perf.samples].sort((a, b) => a - b);
    const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? null;
    return { count: sorted.length, p50: at(0.5), p95: at(0.95), max: sorted.at(-1) ?? null };
  },
};

export function recordPaint(arrivals) {
  // The DOM changed in this frame; the next frame starts after it was painted.
  requestAnimationFrame(() => {
    const now = performance.now();
    for (const arrived of arrivals) if (perf.samples.length < 100_000) perf.samples.push(now - arrived);
  });
}

export function isOperator() {
  return ["operator", "admin"].includes(app.principal?.role);
}

export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.dataset.kind = kind;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 5000);
}

/** Shows an API failure; a refusal names the hub's code so students see what happened. */
export function showError(error) {
  if (error instanceof ApiError && error.status === 403) {
    toast(`${t("forbidden")}: 403 ${error.code} — ${error.message}`, "error");
  } else if (error instanceof ApiError) {
    toast(`${error.status} ${error.code} — ${error.message}`, "error");
  } else {
    toast(String(error), "error");
  }
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function navigate(path) {
  history.pushState(null, "", path);
  route();
}

export async function loadTwins() {
  const [labs, twins] = await Promise.all([api("/api/v1/labs"), api("/api/v1/twins")]);
  app.labs = labs;
  app.twins = new Map(twins.map((twin) => [twin.id, twin]));
}

/** Applies a stream change to the twin we hold, as the hub did to its own. */
function applyChange(change) {
  const twin = app.twins.get(`${change.lab}/${change.machine}`);
  if (!twin) return;
  twin.state = twin.state.value === change.state ? twin.state : { value: change.state, since: change.timestamp };
  twin.connectivity.online = change.online;
  // A twin another hub replica owns arrives as `mirror` changes with its latest values.
  if (change.kind === "sample" || change.kind === "mirror") {
    twin.connectivity.last_seen = change.timestamp;
    for (const [name, value] of Object.entries(change.values)) {
      const [feature, property] = [name.slice(0, name.indexOf(".")), name.slice(name.indexOf(".") + 1)];
      const props = (twin.features[feature] ??= { properties: {} }).properties;
      const prop = (props[property] ??= { unit: "", reported: null, timestamp: null, stale: false });
      prop.reported = value;
      prop.timestamp = change.timestamp;
      prop.stale = false;
    }
  }
  if (change.kind === "alarm" && change.alarm) {
    const alarm = change.alarm.alarm;
    twin.alarms = twin.alarms.filter((a) => a.id !== alarm.id);
    if (!alarm.state.startsWith("cleared")) {
      twin.alarms.push({
        id: alarm.id, rule: alarm.rule, severity: alarm.severity, message: alarm.message,
        raised_at: alarm.raised_at, state: alarm.state === "active_ack" ? "acknowledged" : "active",
      });
    }
  }
}

let stopStream = null;
/** Twins being fetched because the stream named them first, so a burst fetches each once. */
const arriving = new Set();

/**
 * A twin born after the page loaded (a node plugged in, a machine added) is only named by the
 * stream: fetch it whole, with its lab if that is new too, and let the view add its card.
 */
async function adopt(lab, machine) {
  const id = `${lab}/${machine}`;
  if (arriving.has(id) || app.twins.has(id)) return;
  arriving.add(id);
  try {
    const twin = await api(`/api/v1/twins/${lab}/${machine}`);
    if (!app.labs.some((known) => known.id === twin.lab)) app.labs = await api("/api/v1/labs");
    app.twins.set(twin.id, twin);
    app.view?.onTwinAdded?.(twin);
  } catch {
    // Not readable with this login, or gone again: the next change of it tries once more.
  } finally {
    arriving.delete(id);
  }
}

function startStream() {
  stopStream?.();
  const live = document.getElementById("live");
  stopStream = stream({
    onChange(change, arrived) {
      if (!app.twins.has(`${change.lab}/${change.machine}`)) {
        adopt(change.lab, change.machine);
        return;
      }
      applyChange(change);
      app.view?.onChange?.(change, arrived);
    },
    onStatus(status) {
      live.dataset.status = status;
      live.title = `${t("connection")}: ${t(status)}`;
    },
    async onResync() {
      await loadTwins().catch(() => {});
      app.view?.refresh?.();
    },
  });
}

function renderBar() {
  const nav = document.getElementById("nav");
  const links = [
    el("a", { href: "/", "data-link": true }, t("overview")),
    el("a", { href: "/screen", "data-link": true }, t("screen")),
    gamesLink(),
    isOperator() ? el("a", { href: "/guide", "data-link": true }, t("guided_demos")) : null,
    el("a", { href: "/team", "data-link": true }, app.principal?.team ? t("my_team") : t("join_game")),
  ];
  nav.replaceChildren(...links.filter(Boolean));
  const who = document.getElementById("who");
  const principal = app.principal;
  who.textContent = principal?.role ? `${principal.user} · ${principal.role}` : principal ? t("anonymous") : "";
  document.getElementById("lang").textContent = t("language");
  document.getElementById("auth").textContent = principal?.role ? t("logout") : t("login");
}

async function route() {
  app.view?.destroy?.();
  app.view = null;
  renderBar();
  const main = document.getElementById("view");
  const path = location.pathname;
  const board = path.match(/^\/leaderboard\/([a-z0-9-]+)$/);
  document.body.classList.toggle("projector", path === "/screen" || Boolean(board));
  if (path === "/team") {
    app.view = await teamPage(main, start).catch((error) => showError(error));
    return;
  }
  if (board) {
    app.view = await leaderboardScreen(main, board[1]).catch((error) => showError(error));
    return;
  }
  if (path === "/login" || !app.principal) {
    app.view = loginView(main);
    return;
  }
  const machine = path.match(/^\/machine\/([a-z0-9-]+)\/([a-z0-9-]+)(\/protocol)?$/);
  try {
    if (machine) {
      const make = machine[3] ? protocolView : machineView;
      app.view = await make(main, machine[1], machine[2]);
    } else if (path === "/screen") {
      app.view = await screen(main);
    } else if (path === "/games") {
      app.view = await teacherConsole(main);
    } else if (path === "/guide") {
      app.view = await guidePage(main);
    } else {
      app.view = await overview(main);
    }
  } catch (error) {
    main.replaceChildren(el("p", { class: "error" }, `${error.status ?? ""} ${error.code ?? ""} ${error.message}`));
  }
}

export async function signIn(user, password) {
  app.principal = await login(user, password);
  await start();
}

async function start() {
  app.principal = await me();
  if (app.principal) {
    const kinds = await api("/api/v1/catalogue");
    app.kinds = new Map(kinds.map((kind) => [kind.id, kind]));
    await loadTwins();
    startStream();
  }
  if (location.pathname === "/login" && app.principal?.role) history.replaceState(null, "", "/");
  await route();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", route);
document.getElementById("lang").addEventListener("click", () => {
  setLang(lang === "da" ? "en" : "da");
  route();
});
document.getElementById("auth").addEventListener("click", async () => {
  if (app.principal?.role) {
    await logout().catch(() => {});
    stopStream?.();
    app.principal = null;
    await start();
  } else {
    navigate("/login");
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "f" && document.body.classList.contains("projector") && !event.target.closest("input")) {
    document.documentElement.requestFullscreen?.().catch(() => {});
  }
});
setLang(lang);
start().catch(showError);
