// The region overview (also the projector's big screen) and the login form.

import { app, el, recordPaint, signIn, navigate, showError } from "./app.js";
import { localized, num, t, unitText, clock } from "./i18n.js";
import { ApiError } from "./api.js";
import { linesSection, projectorGuide } from "./guide.js";

const STATES = ["running", "idle", "warming", "fault", "off"];

/** The metrics a card shows: those with a normal range (the ones worth watching), at most three. */
export function keyMetrics(kind) {
  return (kind?.metrics ?? []).filter((m) => m.normal).slice(0, 3);
}

export function value(twin, name) {
  const dot = name.indexOf(".");
  return twin.features?.[name.slice(0, dot)]?.properties?.[name.slice(dot + 1)];
}

export function stateLabel(state) {
  return STATES.includes(state) ? t(state) : t("unknown");
}

function card(twin) {
  const kind = app.kinds.get(twin.kind);
  const values = keyMetrics(kind).map((metric) =>
    el("div", { class: "kv", dataset: { metric: metric.name } },
      el("span", { class: "k" }, localized(metric)),
      el("span", { class: "v" }, "–"),
    ));
  values.push(el("div", { class: "kv anomaly", dataset: { metric: "anomaly.score" } },
    el("span", { class: "k" }, t("anomaly")), el("span", { class: "v" }, "–")));
  const node = el("a", {
    class: "card", href: `/machine/${twin.lab}/${twin.machine}`, "data-link": true,
    dataset: { twin: twin.id },
  },
    el("div", { class: "card-head" },
      el("span", { class: "name" }, twin.name || twin.machine),
      el("span", { class: "chip state" })),
    el("div", { class: "kind muted" }, localized(kind, "name") || twin.kind),
    el("div", { class: "values" }, values),
    el("div", { class: "alarm-line" }),
  );
  updateCard(node, twin);
  return node;
}

function updateCard(node, twin) {
  const online = twin.connectivity.online;
  const state = online ? twin.state.value : "offline";
  node.dataset.state = state;
  const chip = node.querySelector(".chip.state");
  chip.textContent = online ? stateLabel(twin.state.value) : t("offline");
  for (const kv of node.querySelectorAll(".kv")) {
    const prop = value(twin, kv.dataset.metric);
    const text = prop?.reported == null ? "–" : `${num(prop.reported)} ${unitText(prop.unit)}`.trim();
    const v = kv.lastChild;
    if (v.textContent !== text) v.textContent = text;
    kv.classList.toggle("stale", Boolean(prop?.stale));
  }
  const alarms = twin.alarms ?? [];
  const line = node.querySelector(".alarm-line");
  const active = alarms.filter((a) => a.state === "active");
  line.textContent = alarms.length ? `⚠ ${alarms.length} · ${alarms[0].message}` : "";
  line.dataset.level = active.length ? "active" : alarms.length ? "ack" : "none";
}

/** Cards by lab, updated from the stream once per frame. */
function regionView(main, { big }) {
  const root = el("div", { class: big ? "region big" : "region" });
  const cards = new Map();
  const build = () => {
    cards.clear();
    const sections = app.labs.map((lab) => {
      const twins = [...app.twins.values()]
        .filter((twin) => twin.lab === lab.id)
        .sort((a, b) => a.machine.localeCompare(b.machine, undefined, { numeric: true }));
      const grid = el("div", { class: "grid" }, twins.map((twin) => {
        const node = card(twin);
        cards.set(twin.id, node);
        return node;
      }));
      return el("section", { class: "lab", dataset: { lab: lab.id } },
        el("h2", {}, lab.name || lab.id,
          el("span", { class: "muted small" }, ` ${lab.location ?? ""} · ${twins.length} ${t("machines")}`)),
        grid);
    });
    root.replaceChildren(...sections);
  };
  build();
  main.replaceChildren(root);

  let dirty = new Map();
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    const arrivals = [];
    for (const [id, times] of dirty) {
      const node = cards.get(id);
      const twin = app.twins.get(id);
      if (node && twin) updateCard(node, twin);
      arrivals.push(...times);
    }
    dirty = new Map();
    recordPaint(arrivals);
  };
  return {
    root,
    onChange(change, arrived) {
      const id = `${change.lab}/${change.machine}`;
      if (!cards.has(id)) return;
      if (!dirty.has(id)) dirty.set(id, []);
      dirty.get(id).push(arrived);
      if (!scheduled) {
        scheduled = true;
        requestAnimationFrame(flush);
      }
    },
    refresh: build,
    // Rare (a twin born after page load), so rebuilding keeps the sorted order and lab counts
    // simple; the new card starts from the fetched twin, the stream keeps it current.
    onTwinAdded: build,
  };
}

export async function overview(main) {
  const view = regionView(main, { big: false });
  const stopLines = linesSection(main);
  return { ...view, destroy: stopLines };
}

/** The projector view: the region in large type with a clock, for full screen. */
export async function screen(main) {
  const view = regionView(main, { big: true });
  const time = el("div", { class: "screen-clock" });
  const hint = el("button", {
    class: "ghost", type: "button",
    onclick: () => document.documentElement.requestFullscreen?.().catch(() => {}),
  }, `⛶ ${t("fullscreen")}`);
  main.prepend(el("div", { class: "screen-head" }, el("h1", {}, "Demolab"), el("span", { class: "muted" }, t("demo_hint")), hint, time));
  const stopGuide = projectorGuide(main);
  const tick = () => { time.textContent = clock(Date.now()); };
  tick();
  const timer = setInterval(tick, 1000);
  return { ...view, destroy: () => { clearInterval(timer); stopGuide(); } };
}

export function loginView(main) {
  const message = el("p", { class: "error", id: "login-error" });
  const user = el("input", { name: "user", autocomplete: "username", required: true });
  const password = el("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = el("form", {
    class: "login panel",
    async onsubmit(event) {
      event.preventDefault();
      message.textContent = "";
      try {
        await signIn(user.value.trim(), password.value);
      } catch (error) {
        if (error instanceof ApiError) message.textContent = `${t("login_failed")}: ${error.code}`;
        else showError(error);
      }
    },
  },
    el("h1", {}, t("login")),
    el("label", {}, t("user"), user),
    el("label", {}, t("password"), password),
    el("button", { type: "submit", class: "primary" }, t("login")),
    message,
    app.principal ? el("a", { href: "/", "data-link": true }, `← ${t("overview")}`) : null,
  );
  main.replaceChildren(form);
  user.focus();
  return { navigate };
}
