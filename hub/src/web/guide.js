// Guided demonstrations: the operator's page (/guide) that runs a playbook, and what the
// projector (/screen) shows of it — the narration, a highlight on what to look at, the security
// counters and the virtual lines.

import { app, el, isOperator, showError } from "./app.js";
import { api } from "./api.js";
import { lang, num, t } from "./i18n.js";

const REFRESH_MS = 1000;

const SECURITY_ROWS = [
  ["mqtt_logins_refused", "sec_mqtt_logins"],
  ["mqtt_publishes_refused", "sec_mqtt_publishes"],
  ["mqtt_subscriptions_refused", "sec_mqtt_subscriptions"],
  ["web_logins_refused", "sec_web_logins"],
  ["wire_refused", "sec_wire"],
];

function say(step) {
  return lang === "da" ? step.say_da : step.say;
}

function every(ms, work) {
  let timer = null;
  let gone = false;
  const tick = async () => {
    try {
      await work();
    } catch {
      // A refused or failed poll shows nothing new; the next one tries again.
    }
    if (!gone) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    gone = true;
    clearTimeout(timer);
  };
}

function securityPanel(counters) {
  return el("section", { class: "panel security", "data-panel": "security" },
    el("h3", {}, t("security")),
    el("div", { class: "tiles" }, SECURITY_ROWS.map(([key, label]) =>
      el("div", { class: "tile", dataset: { counter: key } },
        el("span", { class: "muted small" }, t(label)),
        el("strong", { class: "big-number" }, num(counters[key] ?? 0))))));
}

function linePanel(line) {
  return el("section", { class: "panel line", "data-panel": "line", dataset: { line: line.line } },
    el("h3", {}, `${t("line")} ${line.line}`),
    el("div", { class: "stations" }, line.stations.flatMap((station, i) => [
      i ? el("span", { class: "flow-arrow" }, "→") : null,
      el("div", {
        class: `station ${station.twin === line.stalled_at ? "stalled" : ""}`,
        dataset: { twin: station.twin, state: station.online ? station.state : "offline" },
      },
        el("strong", {}, station.name || station.twin),
        el("span", { class: "muted small" }, station.twin),
        el("span", {}, station.online ? t(station.state) || station.state : t("offline")),
        station.parts == null ? null : el("span", {}, `${num(station.parts)} ${t("parts")}`)),
    ])),
    el("p", { class: line.stalled_at ? "error" : "muted" },
      line.stalled_at ? `${t("stalls_at")} ${line.stalled_at}` : t("line_flowing")));
}

/** The virtual production lines under the labs, kept current: flow, states, where they stall. */
export function linesSection(main) {
  const section = el("section", { class: "lines" });
  main.append(section);
  return every(2 * REFRESH_MS, async () => {
    const lines = await api("/api/v1/lines");
    section.replaceChildren(...lines.map(linePanel));
  });
}

/** Marks what the step points at; returns the extra panel the step wants shown, if any. */
function highlight(run) {
  for (const node of document.querySelectorAll(".pointed")) node.classList.remove("pointed");
  const point = run?.current.point;
  if (!point) return null;
  const card = run.twin ? document.querySelector(`.card[data-twin="${run.twin}"]`) : null;
  if (point === "card" || point === "alarms") card?.classList.add("pointed");
  if (point === "alarms") card?.querySelector(".alarm-line")?.classList.add("pointed");
  if (point.includes(".") && card) {
    card.classList.add("pointed");
    card.querySelector(`.kv[data-metric="${point}"]`)?.classList.add("pointed");
  }
  card?.scrollIntoView?.({ block: "nearest" });
  return point === "security" || point === "line" ? point : null;
}

/** The projector's part: a narration bar above the region, kept in step with the hub. */
export function projectorGuide(main) {
  const bar = el("section", { class: "guide", hidden: true });
  const extra = el("div", { class: "guide-extra" });
  main.prepend(bar, extra);
  let shown = "";
  return every(REFRESH_MS, async () => {
    const run = await api("/api/v1/playbooks/run");
    const panel = highlight(run);
    if (!run) {
      // No demonstration: say what the scenarios an operator started are doing, if any.
      const running = (await api("/api/v1/scenarios")).running ?? [];
      bar.hidden = !running.length;
      bar.replaceChildren(...running.map((r) => el("div", { class: "scenario-running", dataset: { twin: r.twin } },
        el("div", { class: "guide-title" }, `${r.title || r.scenario} · ${r.twin}`),
        el("ul", { class: "scenario-notes" }, (r.notes ?? []).map((note) => el("li", {}, note))))));
      for (const r of running) document.querySelector(`.card[data-twin="${r.twin}"]`)?.classList.add("pointed");
      extra.replaceChildren();
      shown = "";
      return;
    }
    bar.hidden = false;
    const key = `${run.playbook}/${run.step}/${lang}`;
    if (key !== shown) {
      shown = key;
      bar.replaceChildren(...[
        el("div", { class: "guide-title" }, lang === "da" ? run.title_da : run.title,
          el("span", { class: "muted" }, ` · ${run.step + 1}/${run.steps}`)),
        el("p", { class: "narration", dataset: { step: String(run.step) } }, say(run.current)),
        run.waiting ? el("p", { class: "muted small waiting" }, t("waiting_condition")) : null,
      ].filter(Boolean));
    }
    if (panel === "security") {
      extra.replaceChildren(securityPanel(await api("/api/v1/security")));
    } else if (panel === "line") {
      const lines = await api("/api/v1/lines");
      extra.replaceChildren(...lines.filter((l) => !run.line || l.line === run.line).map(linePanel));
    } else {
      extra.replaceChildren();
    }
  });
}

/** The operator's page: choose a playbook and a machine, start, move on, reset. */
export async function guidePage(main) {
  const playbooks = await api("/api/v1/playbooks");
  const status = el("div", { class: "panel guide-status" });
  const machines = el("select", { name: "twin" });
  const choice = el("select", { name: "playbook", onchange: () => fillMachines() },
    playbooks.map((p) => el("option", { value: p.id }, lang === "da" ? p.title_da : p.title)));
  const summary = el("p", { class: "muted" });
  function fillMachines() {
    const playbook = playbooks.find((p) => p.id === choice.value);
    summary.textContent = lang === "da" ? playbook.summary_da : playbook.summary;
    const fitting = [...app.twins.values()].filter((twin) => twin.kind === playbook.kind);
    machines.replaceChildren(...fitting.map((twin) => el("option", { value: twin.id }, twin.id)));
    machines.disabled = !playbook.kind;
  }
  fillMachines();
  const act = (method, path, body) => async () => {
    try {
      await api(path, { method, body });
      await refresh();
    } catch (error) {
      showError(error);
    }
  };
  const controls = el("form", { class: "panel guide-controls", onsubmit: (event) => {
    event.preventDefault();
    const body = { playbook: choice.value };
    if (!machines.disabled && machines.value) body.twin = machines.value;
    act("POST", "/api/v1/playbooks/run", body)();
  } },
    el("h3", {}, t("guided_demos")),
    el("label", { class: "field" }, el("span", {}, t("playbook")), choice),
    el("label", { class: "field" }, el("span", {}, t("machine")), machines),
    summary,
    el("div", { class: "actions" },
      el("button", { type: "submit", class: "primary", disabled: !isOperator() }, t("start")),
      el("button", { type: "button", dataset: { action: "next" }, onclick: act("POST", "/api/v1/playbooks/run/next") }, t("next_step")),
      el("button", { type: "button", dataset: { action: "reset" }, onclick: act("DELETE", "/api/v1/playbooks/run") }, t("reset")),
      el("a", { href: "/screen", "data-link": true }, t("screen"))));
  main.replaceChildren(el("section", { class: "guide-page" }, controls, status));

  async function refresh() {
    const run = await api("/api/v1/playbooks/run");
    status.replaceChildren(run
      ? el("div", {},
        el("h3", {}, `${lang === "da" ? run.title_da : run.title} · ${run.step + 1}/${run.steps}`),
        el("p", { class: "narration" }, say(run.current)),
        run.waiting ? el("p", { class: "muted" }, t("waiting_condition")) : null,
        run.twin ? el("p", { class: "muted" }, run.twin) : null)
      : el("p", { class: "muted" }, t("no_demo")));
  }
  const stop = every(REFRESH_MS, refresh);
  return { destroy: stop };
}
