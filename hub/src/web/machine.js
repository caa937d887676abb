// The machine page (twin, live and history charts, alarms, desired values, anomaly score) and
// the protocol view (the path of one value from node to this page, with latency per hop).

import { api } from "./api.js";
import { app, el, isOperator, showError, toast, recordPaint } from "./app.js";
import { LiveChart, drawHistory } from "./chart.js";
import { ago, clock, localized, num, t, unitText } from "./i18n.js";
import { keyMetrics, stateLabel, value } from "./views.js";

const RANGES = [["last_15m", 15 * 60_000], ["last_1h", 3_600_000], ["last_1d", 86_400_000]];
const ANOMALY = "anomaly.score";

function twinPath(lab, machine) {
  return `/api/v1/twins/${lab}/${machine}`;
}

function stateChip(twin) {
  const online = twin.connectivity.online;
  return el("span", { class: "chip state", dataset: { state: online ? twin.state.value : "offline" } },
    online ? stateLabel(twin.state.value) : t("offline"));
}

function properties(twin, kind) {
  const rows = [];
  for (const [feature, { properties: props }] of Object.entries(twin.features)) {
    for (const [property, prop] of Object.entries(props)) {
      const name = `${feature}.${property}`;
      const spec = kind?.metrics.find((m) => m.name === name);
      rows.push(el("tr", { dataset: { metric: name }, class: prop.stale ? "stale" : "" },
        el("td", {}, spec ? localized(spec) : name, el("div", { class: "muted small mono" }, name)),
        el("td", { class: "num v" }, num(prop.reported)),
        el("td", {}, unitText(prop.unit)),
        el("td", { class: "age muted", dataset: { ts: prop.timestamp ?? "" } },
          prop.stale ? t("stale") : ago(prop.timestamp))));
    }
  }
  return el("table", { class: "props" },
    el("thead", {}, el("tr", {}, el("th", {}, t("properties")), el("th", {}, t("value")), el("th", {}, t("unit")), el("th", {}, t("age")))),
    el("tbody", {}, rows));
}

function alarmRow(alarm, reload) {
  const active = alarm.state.startsWith("active");
  const acked = alarm.state.endsWith("_ack");
  const button = el("button", {
    type: "button",
    class: isOperator() ? "primary ack" : "ack locked",
    title: isOperator() ? null : t("operator_only"),
    async onclick() {
      button.disabled = true;
      try {
        await api(`/api/v1/alarms/${alarm.id}/ack`, { method: "POST" });
        toast(`${t("acknowledged")}: ${alarm.message}`);
        await reload();
      } catch (error) {
        showError(error);
        const refusal = button.parentElement.querySelector(".refusal");
        if (refusal) refusal.textContent = `${t("forbidden")}: ${error.status ?? ""} ${error.code ?? ""}`;
        button.disabled = false;
      }
    },
  }, t("acknowledge"));
  return el("li", { class: `alarm ${active ? "active" : "cleared"} ${acked ? "acked" : ""}`, dataset: { alarm: alarm.id } },
    el("span", { class: `sev ${alarm.severity}` }, alarm.severity),
    el("span", { class: "msg" }, alarm.message, el("div", { class: "muted small" }, `${clock(alarm.raised_at)} · ${alarm.rule}`)),
    acked ? el("span", { class: "muted small" }, `${t("acknowledged")} · ${alarm.acknowledged_by ?? ""}`) : button,
    el("span", { class: "refusal error small" }));
}

function desiredControls(twin, kind, lab, machine) {
  if (!kind?.writable?.length) return null;
  const rows = kind.writable.map((spec) => {
    const input = el("input", { type: "number", min: spec.min, max: spec.max, step: "any", value: twin.desired?.[spec.name]?.value ?? "" });
    const status = el("span", { class: "muted small status" }, twin.desired?.[spec.name] ? t(twin.desired[spec.name].status) : "");
    const submit = el("button", {
      type: "submit", class: isOperator() ? "primary" : "locked", title: isOperator() ? null : t("operator_only"),
    }, t("set"));
    return el("form", {
      class: "desired-row", dataset: { metric: spec.name },
      async onsubmit(event) {
        event.preventDefault();
        try {
          await api(`${twinPath(lab, machine)}/desired`, { method: "PATCH", body: { [spec.name]: Number(input.value) } });
          status.textContent = t("pending");
        } catch (error) {
          showError(error);
          status.textContent = `${error.status ?? ""} ${error.code ?? error}`;
        }
      },
    },
      el("label", {}, `${localized(spec)} (${unitText(spec.unit)}, ${num(spec.min)}–${num(spec.max)})`, input),
      submit, status);
  });
  return el("section", { class: "panel" }, el("h3", {}, t("desired"), isOperator() ? null : el("span", { class: "muted small" }, ` · ${t("operator_only")}`)), rows);
}

// Demo mode: start a simulator scenario on this (simulated) machine and watch its effect.
function demoControls(scenarios, twinId, lab, machine) {
  const offered = (scenarios?.available ?? []).filter((s) => s.machines.includes(twinId));
  if (!offered.length) return null;
  const running = () => (scenarios.running ?? []).find((r) => r.twin === twinId);
  const status = el("div", { class: "muted small status demo-status" });
  const show = () => {
    const r = running();
    status.replaceChildren(r ? `${t("running_scenario")}: ${r.title || r.scenario} · ${r.started_by} · ${clock(r.started_at)}` : t("no_scenario"),
      ...(r?.notes?.length ? [el("ul", { class: "scenario-notes" }, r.notes.map((note) => el("li", {}, note)))] : []));
  };
  const select = el("select", { class: "demo-scenario" }, offered.map((s) => el("option", { value: s.name, title: s.description }, s.title)));
  const describe = el("p", { class: "muted small" });
  const explain = () => { describe.textContent = offered.find((s) => s.name === select.value)?.description ?? ""; };
  // The notes say what happens; shown while the scenario runs (status), for the audience.
  select.addEventListener("change", explain);
  const refresh = async () => {
    scenarios = await api("/api/v1/scenarios");
    show();
  };
  const act = (label, cls, run) => el("button", {
    type: "button", class: isOperator() ? `primary ${cls}` : `locked ${cls}`, title: isOperator() ? null : t("operator_only"),
    async onclick() {
      try {
        await run();
        await refresh();
      } catch (error) {
        showError(error);
        status.textContent = `${error.status ?? ""} ${error.code ?? error}`;
      }
    },
  }, label);
  const start = act(t("start_scenario"), "demo-start", () =>
    api(`${twinPath(lab, machine)}/scenario`, { method: "POST", body: { scenario: select.value } }));
  const stop = act(t("stop_scenario"), "demo-stop", () =>
    api(`${twinPath(lab, machine)}/scenario`, { method: "DELETE" }));
  explain();
  show();
  return el("section", { class: "panel demo" },
    el("h3", {}, t("demo_mode"), isOperator() ? null : el("span", { class: "muted small" }, ` · ${t("operator_only")}`)),
    el("div", { class: "demo-row" }, select, start, stop), describe, status);
}

function historyPanel(lab, machine, metrics) {
  const canvas = el("canvas", { class: "chart tall", id: "history-chart" });
  const note = el("span", { class: "muted small" });
  const select = el("select", {}, metrics.map((m) => el("option", { value: m.name }, localized(m) || m.name)));
  const from = el("input", { type: "datetime-local" });
  const to = el("input", { type: "datetime-local" });
  let range = RANGES[1][1];
  let custom = null;
  const load = async () => {
    const end = custom ? custom[1] : Date.now();
    const start = custom ? custom[0] : end - range;
    try {
      const doc = await api(`${twinPath(lab, machine)}/history?metric=${encodeURIComponent(select.value)}&from=${Math.floor(start)}&to=${Math.floor(end)}`);
      const drawn = drawHistory(canvas, { from: start, to: end, buckets: doc.buckets, unit: unitText(doc.unit) });
      note.textContent = drawn ? `${doc.buckets.length} × ${num(doc.step / 1000)} s` : t("no_data");
    } catch (error) {
      showError(error);
    }
  };
  const buttons = RANGES.map(([key, ms]) => el("button", {
    type: "button", class: "seg", dataset: { range: key },
    onclick(event) {
      range = ms;
      custom = null;
      for (const b of buttons) b.classList.toggle("on", b === event.currentTarget);
      load();
    },
  }, t(key)));
  buttons[1].classList.add("on");
  const customForm = el("form", {
    class: "custom", onsubmit(event) {
      event.preventDefault();
      const a = Date.parse(from.value);
      const b = Date.parse(to.value);
      if (Number.isFinite(a) && Number.isFinite(b) && a < b) {
        custom = [a, b];
        for (const button of buttons) button.classList.remove("on");
        load();
      }
    },
  }, el("label", {}, t("from"), from), el("label", {}, t("to"), to), el("button", { type: "submit" }, t("show")));
  select.addEventListener("change", load);
  const panel = el("section", { class: "panel wide" },
    el("h3", {}, t("history")),
    el("div", { class: "toolbar" }, select, el("div", { class: "segs" }, buttons), customForm, note),
    canvas);
  return { panel, load };
}

export async function machineView(main, lab, machine) {
  const [twin, alarmsList, scenarios] = await Promise.all([
    api(twinPath(lab, machine)),
    api(`/api/v1/alarms?lab=${lab}&machine=${machine}`),
    api("/api/v1/scenarios").catch(() => null),
  ]);
  app.twins.set(twin.id, twin);
  const kind = app.kinds.get(twin.kind);
  const chartMetrics = keyMetrics(kind);
  const hasAnomaly = Boolean(value(twin, ANOMALY));
  const liveSpecs = [...chartMetrics, ...(hasAnomaly ? [{ name: ANOMALY, label: "Anomaly score", label_da: "Anomali-score" }] : [])];

  const charts = new Map();
  const livePanels = liveSpecs.map((spec) => {
    const prop = value(twin, spec.name);
    const canvas = el("canvas", { class: "chart", dataset: { metric: spec.name } });
    charts.set(spec.name, new LiveChart(canvas, { unit: unitText(prop?.unit ?? spec.unit ?? "") }));
    return el("div", { class: "live-chart" },
      el("div", { class: "live-head" }, el("span", {}, localized(spec)),
        el("span", { class: "big-value", dataset: { metric: spec.name } }, num(prop?.reported), " ", el("small", {}, unitText(prop?.unit ?? "")))),
      canvas);
  });

  const alarmList = el("ul", { class: "alarms" });
  const reloadAlarms = async () => {
    const list = await api(`/api/v1/alarms?lab=${lab}&machine=${machine}`);
    alarmList.replaceChildren(...(list.length ? list.slice(0, 20).map((a) => alarmRow(a, reloadAlarms)) : [el("li", { class: "muted" }, t("no_alarms"))]));
  };
  alarmList.replaceChildren(...(alarmsList.length ? alarmsList.slice(0, 20).map((a) => alarmRow(a, reloadAlarms)) : [el("li", { class: "muted" }, t("no_alarms"))]));

  const history = historyPanel(lab, machine, liveSpecs);
  const propsHolder = el("div", {}, properties(twin, kind));
  const anomaly = value(twin, ANOMALY);
  const anomalyBar = el("div", { class: "meter" }, el("div", { class: "fill" }));
  const k = twin.kpis ?? {};
  const header = el("div", { class: "machine-head" },
    el("a", { href: "/", "data-link": true, class: "muted" }, `← ${t("back")}`),
    el("h1", {}, twin.name || twin.machine, " ", stateChip(twin)),
    el("div", { class: "muted" }, `${twin.id} · ${localized(kind, "name") || twin.kind} · ${t("gateway")}: ${twin.connectivity.gateway ?? "–"}`),
    el("a", { href: `/machine/${lab}/${machine}/protocol`, "data-link": true, class: "button" }, `⇄ ${t("protocol")}`));
  const attributes = Object.entries(twin.attributes ?? {});
  main.replaceChildren(el("div", { class: "machine", dataset: { twin: twin.id } },
    header,
    el("div", { class: "tiles" },
      el("div", { class: "tile" }, el("span", { class: "k" }, t("energy_today")), el("span", { class: "v" }, `${num(k.energy_today_wh)} Wh`)),
      el("div", { class: "tile" }, el("span", { class: "k" }, t("utilisation")), el("span", { class: "v" }, k.utilisation == null ? "–" : `${num(k.utilisation * 100)} %`)),
      el("div", { class: "tile" }, el("span", { class: "k" }, t("cycles_today")), el("span", { class: "v" }, num(k.cycles_today))),
      el("div", { class: "tile anomaly-tile" }, el("span", { class: "k" }, t("anomaly")),
        el("span", { class: "v", id: "anomaly-value" }, num(anomaly?.reported)), anomalyBar)),
    el("section", { class: "panel wide" }, el("h3", {}, t("live")), el("div", { class: "live-grid" }, livePanels)),
    history.panel,
    el("section", { class: "panel" }, el("h3", {}, t("alarms")), alarmList),
    desiredControls(twin, kind, lab, machine),
    demoControls(scenarios, twin.id, lab, machine),
    el("section", { class: "panel" }, el("h3", {}, t("properties")), propsHolder),
    attributes.length ? el("section", { class: "panel" }, el("h3", {}, t("attributes")),
      el("table", { class: "props" }, el("tbody", {}, attributes.map(([key, v]) => el("tr", {}, el("td", {}, key), el("td", {}, v)))))) : null,
  ));
  // The bar is full at the kind's alarm threshold (a z-score-like scale, 5 for a mill).
  const threshold = kind?.anomaly?.threshold ?? 5;
  const setAnomaly = (score) => {
    document.getElementById("anomaly-value").textContent = num(score);
    anomalyBar.firstChild.style.width = `${Math.min(100, Math.max(0, ((score ?? 0) / threshold) * 100))}%`;
    anomalyBar.dataset.level = score >= threshold ? "high" : score >= 0.6 * threshold ? "mid" : "low";
  };
  setAnomaly(anomaly?.reported);
  history.load();

  // Seed the live charts with the last two minutes so they start full.
  const now = Date.now();
  await Promise.all(liveSpecs.map(async (spec) => {
    try {
      const doc = await api(`${twinPath(lab, machine)}/history?metric=${spec.name}&from=${now - 120_000}&to=${now}&step=1000`);
      for (const b of doc.buckets) charts.get(spec.name).push(b.start_ms, b.mean);
    } catch {
      // An empty chart still fills from the stream.
    }
  }));

  const ages = setInterval(() => {
    for (const cell of main.querySelectorAll("td.age")) {
      if (cell.dataset.ts && !cell.parentElement.classList.contains("stale")) cell.textContent = ago(Number(cell.dataset.ts));
    }
  }, 1000);

  return {
    onChange(change, arrived) {
      if (change.lab !== lab || change.machine !== machine) return;
      const current = app.twins.get(twin.id);
      if (change.kind === "sample" || change.kind === "mirror") {
        for (const [name, v] of Object.entries(change.values)) {
          charts.get(name)?.push(change.timestamp, v);
          const big = main.querySelector(`.big-value[data-metric="${name}"]`);
          if (big) big.firstChild.textContent = num(v);
          const row = main.querySelector(`tr[data-metric="${name}"]`);
          if (row) {
            row.querySelector(".v").textContent = num(v);
            const age = row.querySelector(".age");
            age.dataset.ts = change.timestamp;
            age.textContent = ago(change.timestamp);
            row.classList.remove("stale");
          }
          if (name === ANOMALY) setAnomaly(v);
        }
      }
      if (change.kind === "alarm") reloadAlarms().catch(() => {});
      if (["birth", "offline", "desired", "properties"].includes(change.kind)) {
        api(twinPath(lab, machine)).then((fresh) => {
          app.twins.set(fresh.id, fresh);
          propsHolder.replaceChildren(properties(fresh, kind));
          for (const row of main.querySelectorAll(".desired-row")) {
            const d = fresh.desired?.[row.dataset.metric];
            if (d) row.querySelector(".status").textContent = t(d.status);
          }
        }).catch(() => {});
      }
      const chip = header.querySelector(".chip.state");
      chip.replaceWith(stateChip(current ?? twin));
      recordPaint([arrived]);
    },
    destroy() {
      for (const chart of charts.values()) chart.stop();
      clearInterval(ages);
    },
  };
}

function hop(title, facts, latency) {
  return el("li", { class: "hop" },
    el("div", { class: "hop-title" }, title),
    el("dl", {}, facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, v)])),
    latency == null ? null : el("div", { class: "latency" }, latency));
}

export async function protocolView(main, lab, machine) {
  let path = await api(`${twinPath(lab, machine)}/sparkplug`);
  const twin = app.twins.get(`${lab}/${machine}`) ?? (await api(twinPath(lab, machine)));
  const kind = app.kinds.get(twin.kind);
  const flow = el("ol", { class: "flow" }, el("li", { class: "muted" }, t("waiting")));
  const recent = el("tbody");
  main.replaceChildren(el("div", { class: "protocol" },
    el("a", { href: `/machine/${lab}/${machine}`, "data-link": true, class: "muted" }, `← ${twin.name || machine}`),
    el("h1", {}, t("path_title"), el("span", { class: "muted" }, ` · ${twin.id}`)),
    el("p", {}, t("path_intro")),
    flow,
    el("p", { class: "muted small" }, t("no_node_clock"), " ", t("clock_note")),
    el("table", { class: "props" },
      el("thead", {}, el("tr", {}, ["node seq", "seq", "bdSeq", "gateway ts", "gateway → hub", "hub → browser"].map((h) => el("th", {}, h)))),
      recent)));

  const ms = (v) => (v == null ? "–" : `${num(v)} ms`);
  const precise = (at) => `${clock(at)}.${String(at % 1000).padStart(3, "0")}`;
  return {
    onChange(change, arrived) {
      if (change.lab !== lab || change.machine !== machine) return;
      if (change.sparkplug?.message === "DBIRTH") {
        api(`${twinPath(lab, machine)}/sparkplug`).then((fresh) => { path = fresh; }).catch(() => {});
      }
      if (change.kind !== "sample") return;
      const shownAt = Date.now();
      const spb = change.sparkplug ?? {};
      const toHub = change.received_ms == null ? null : change.received_ms - change.timestamp;
      const toBrowser = change.received_ms == null ? null : shownAt - change.received_ms;
      const aliases = Object.keys(change.values)
        .filter((name) => name in path.aliases)
        .map((name) => {
          const spec = kind?.metrics.find((m) => m.name === name);
          return `${path.aliases[name]} → ${name} = ${num(change.values[name])}${spec ? ` ${unitText(spec.unit)}` : ""}`;
        });
      flow.replaceChildren(
        hop(t("hop_node"), [[t("node_seq"), String(change.seq)]], null),
        hop(t("hop_gateway"), [[t("gw_time"), precise(change.timestamp)]], "node → gateway: ? ms"),
        hop(t("hop_sparkplug"), [
          [t("topic"), spb.topic ?? "–"], [t("spb_seq"), String(spb.seq ?? "–")],
          [t("bd_seq"), String(spb.bd_seq ?? "–")], [t("aliases"), aliases.join("\n") || "–"],
        ], null),
        hop(t("hop_hub"), [[t("received"), change.received_ms == null ? "–" : precise(change.received_ms)]], `gateway → hub: ${ms(toHub)}`),
        hop(t("hop_browser"), [[t("shown"), precise(shownAt)]], `hub → ${t("hop_browser").toLowerCase()}: ${ms(toBrowser)}`),
      );
      recent.prepend(el("tr", {}, [change.seq, spb.seq ?? "–", spb.bd_seq ?? "–", precise(change.timestamp), ms(toHub), ms(toBrowser)].map((c) => el("td", { class: "mono" }, String(c)))));
      while (recent.children.length > 12) recent.lastChild.remove();
      recordPaint([arrived]);
    },
  };
}
