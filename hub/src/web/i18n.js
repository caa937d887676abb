// Labels in English and Danish. Metric and kind names come from the hub's catalogue
// (`label`/`label_da`, `name`/`name_da`); this dictionary holds the page's own words.

const words = {
  en: {
    games: "Games", teacher_console: "Teacher console", new_game: "New game", template: "Template",
    lab: "Lab", all_labs: "All labs with a suitable machine", duration_min: "Minutes", speed: "Speed (×)",
    create: "Create", no_games: "No games yet: create one from a template.", join_code: "Join code",
    phase_open: "Open for teams", phase_running: "Running", phase_paused: "Paused", phase_ended: "Over",
    start: "Start", pause: "Pause", resume: "Resume", end: "End", ends: "ends", team: "Team",
    score: "Score", answered: "Answered", answer_key: "Answer key", results_csv: "Results (CSV)",
    leaderboard: "Leaderboard", no_teams: "No team has joined yet", join_game: "Join a game",
    my_team: "My team", team_name: "Team name", join: "Join", hint: "hint", points: "points",
    your_answer: "Your answer", answer_time: "Time (hh:mm:ss)", send: "Send",
    period_reference: "Reference period", period_measured: "Measured period",
    your_machines: "Your machines", hint_label: "Hint",
    guided_demos: "Guided demonstrations", playbook: "Demonstration", next_step: "Next step",
    reset: "Reset for the next visitors", no_demo: "No demonstration is running.",
    waiting_condition: "Waiting for it to happen…", security: "Security: refused and counted",
    sec_mqtt_logins: "MQTT logins refused", sec_mqtt_publishes: "Fake messages refused",
    sec_mqtt_subscriptions: "Subscriptions refused", sec_web_logins: "Web logins refused",
    sec_wire: "Sparkplug messages refused", parts: "parts", stalls_at: "The line stalls at",
    line_flowing: "Parts flow through the whole line.",
    overview: "Overview", screen: "Big screen", login: "Log in", logout: "Log out",
    user: "User", password: "Password", anonymous: "Guest (read only)",
    labs: "Labs", machines: "machines", online: "online", offline: "Offline",
    alarms: "Alarms", no_alarms: "No active alarms", acknowledge: "Acknowledge",
    acknowledged: "Acknowledged", state: "State", since: "since",
    running: "Running", idle: "Idle", warming: "Warming up", fault: "Fault", off: "Off", unknown: "Unknown",
    properties: "Properties", attributes: "Attributes", value: "Value", unit: "Unit", age: "Age",
    stale: "stale", live: "Live", history: "History", last_15m: "15 min", last_1h: "Hour",
    last_1d: "Day", custom: "Custom", from: "From", to: "To", show: "Show",
    desired: "Desired properties", set: "Set", status: "Status",
    demo_mode: "Demo mode", start_scenario: "Start scenario", stop_scenario: "Stop",
    running_scenario: "Running", no_scenario: "No scenario running",
    anomaly: "Anomaly score", kpis: "Today", energy_today: "Energy", utilisation: "Utilisation",
    cycles_today: "Cycles", protocol: "Protocol view", machine: "Machine",
    back: "All labs", fullscreen: "Full screen", no_data: "No data in this range",
    operator_only: "Operators only", forbidden: "Refused by the hub",
    login_failed: "Login failed", logged_in_as: "Logged in as",
    path_title: "The path of one value", path_intro:
      "Every sample travels node → gateway → Sparkplug B message over MQTT → hub twin → this page. Below: the latest sample and what each hop added, with the time it took.",
    hop_node: "Sensor node", hop_gateway: "Edge gateway", hop_sparkplug: "Sparkplug B message",
    hop_hub: "Hub twin", hop_browser: "This browser",
    node_seq: "node sequence", gw_time: "gateway time stamp", topic: "topic",
    spb_seq: "seq", bd_seq: "bdSeq", aliases: "metric aliases (from DBIRTH)",
    received: "received by hub", shown: "shown here",
    no_node_clock: "Node frames carry the node's uptime, not a wall-clock time, so the node → gateway latency cannot be measured.",
    clock_note: "Gateway → hub uses two clocks; on one computer they agree, across computers they may not.",
    waiting: "Waiting for the next sample…", latency: "latency", connection: "Live connection",
    connected: "connected", reconnecting: "reconnecting", language: "Dansk",
    kind: "Kind", line: "Line", gateway: "Gateway", last_seen: "Last seen",
    ago_s: "s ago", ago_m: "min ago", ago_h: "h ago",
    pending: "pending", applied: "applied", invalid: "invalid", unsupported: "unsupported",
    failed: "failed", no_answer: "no answer", demo_hint: "Projector view — press F for full screen",
  },
  da: {
    games: "Spil", teacher_console: "Lærerkonsol", new_game: "Nyt spil", template: "Skabelon",
    lab: "Laboratorium", all_labs: "Alle laboratorier med en egnet maskine", duration_min: "Minutter", speed: "Hastighed (×)",
    create: "Opret", no_games: "Ingen spil endnu: opret et fra en skabelon.", join_code: "Deltagerkode",
    phase_open: "Åbent for hold", phase_running: "I gang", phase_paused: "På pause", phase_ended: "Slut",
    start: "Start", pause: "Pause", resume: "Fortsæt", end: "Afslut", ends: "slutter", team: "Hold",
    score: "Point", answered: "Besvaret", answer_key: "Facitliste", results_csv: "Resultater (CSV)",
    leaderboard: "Stilling", no_teams: "Intet hold er med endnu", join_game: "Deltag i et spil",
    my_team: "Mit hold", team_name: "Holdnavn", join: "Deltag", hint: "hjælp", points: "point",
    your_answer: "Jeres svar", answer_time: "Tidspunkt (tt:mm:ss)", send: "Send",
    period_reference: "Referenceperiode", period_measured: "Måleperiode",
    your_machines: "Jeres maskiner", hint_label: "Hjælp",
    guided_demos: "Guidede demonstrationer", playbook: "Demonstration", next_step: "Næste trin",
    reset: "Nulstil til næste besøgende", no_demo: "Ingen demonstration kører.",
    waiting_condition: "Venter på at det sker…", security: "Sikkerhed: afvist og talt",
    sec_mqtt_logins: "MQTT-logins afvist", sec_mqtt_publishes: "Falske beskeder afvist",
    sec_mqtt_subscriptions: "Abonnementer afvist", sec_web_logins: "Web-logins afvist",
    sec_wire: "Sparkplug-beskeder afvist", parts: "emner", stalls_at: "Linjen står stille ved",
    line_flowing: "Emnerne flyder gennem hele linjen.",
    overview: "Oversigt", screen: "Storskærm", login: "Log ind", logout: "Log ud",
    user: "Bruger", password: "Adgangskode", anonymous: "Gæst (kun læse)",
    labs: "Laboratorier", machines: "maskiner", online: "online", offline: "Offline",
    alarms: "Alarmer", no_alarms: "Ingen aktive alarmer", acknowledge: "Kvittér",
    acknowledged: "Kvitteret", state: "Tilstand", since: "siden",
    running: "Kører", idle: "Tomgang", warming: "Varmer op", fault: "Fejl", off: "Slukket", unknown: "Ukendt",
    properties: "Egenskaber", attributes: "Stamdata", value: "Værdi", unit: "Enhed", age: "Alder",
    stale: "forældet", live: "Live", history: "Historik", last_15m: "15 min", last_1h: "Time",
    last_1d: "Døgn", custom: "Vælg", from: "Fra", to: "Til", show: "Vis",
    desired: "Ønskede værdier", set: "Sæt", status: "Status",
    demo_mode: "Demo-tilstand", start_scenario: "Start scenarie", stop_scenario: "Stop",
    running_scenario: "Kører", no_scenario: "Intet scenarie kører",
    anomaly: "Anomali-score", kpis: "I dag", energy_today: "Energi", utilisation: "Udnyttelse",
    cycles_today: "Cyklusser", protocol: "Protokolvisning", machine: "Maskine",
    back: "Alle laboratorier", fullscreen: "Fuld skærm", no_data: "Ingen data i perioden",
    operator_only: "Kun operatører", forbidden: "Afvist af hubben",
    login_failed: "Login mislykkedes", logged_in_as: "Logget ind som",
    path_title: "En værdis vej", path_intro:
      "Hver måling går node → gateway → Sparkplug B-besked over MQTT → hubbens tvilling → denne side. Herunder: den seneste måling, hvad hvert led tilføjede, og hvor lang tid det tog.",
    hop_node: "Sensornode", hop_gateway: "Edge-gateway", hop_sparkplug: "Sparkplug B-besked",
    hop_hub: "Hubbens tvilling", hop_browser: "Denne browser",
    node_seq: "nodens sekvensnummer", gw_time: "gatewayens tidsstempel", topic: "emne",
    spb_seq: "seq", bd_seq: "bdSeq", aliases: "metrik-aliaser (fra DBIRTH)",
    received: "modtaget af hubben", shown: "vist her",
    no_node_clock: "Nodens rammer bærer nodens oppetid, ikke et klokkeslæt, så forsinkelsen node → gateway kan ikke måles.",
    clock_note: "Gateway → hub bruger to ure; på én computer er de enige, på flere er de måske ikke.",
    waiting: "Venter på næste måling…", latency: "forsinkelse", connection: "Live-forbindelse",
    connected: "forbundet", reconnecting: "genforbinder", language: "English",
    kind: "Type", line: "Linje", gateway: "Gateway", last_seen: "Sidst set",
    ago_s: "s siden", ago_m: "min siden", ago_h: "t siden",
    pending: "afventer", applied: "udført", invalid: "ugyldig", unsupported: "ikke understøttet",
    failed: "fejlet", no_answer: "intet svar", demo_hint: "Projektorvisning — tryk F for fuld skærm",
  },
};

function initial() {
  const saved = localStorage.getItem("demolab.lang");
  if (saved === "en" || saved === "da") return saved;
  return (navigator.language || "en").toLowerCase().startsWith("da") ? "da" : "en";
}

export let lang = initial();

export function setLang(next) {
  lang = next;
  localStorage.setItem("demolab.lang", next);
  document.documentElement.lang = next;
}

/** The page's word for `key` in the current language. */
export function t(key) {
  return words[lang][key] ?? words.en[key] ?? key;
}

/** A catalogue entry's label (`label`/`label_da` or `name`/`name_da`). */
export function localized(entry, field = "label") {
  if (!entry) return "";
  return (lang === "da" && entry[`${field}_da`]) || entry[field] || "";
}

const symbols = { degC: "°C", count: "", state: "", "": "" };

/** A unit symbol as people write it. */
export function unitText(unit) {
  return unit in symbols ? symbols[unit] : unit;
}

/** A number for display, with sensible precision for its size. */
export function num(value) {
  if (value == null || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  const digits = abs >= 1000 ? 0 : abs >= 100 ? 1 : abs >= 1 ? 2 : 3;
  return value.toLocaleString(lang === "da" ? "da-DK" : "en-GB", {
    maximumFractionDigits: digits,
    minimumFractionDigits: 0,
  });
}

/** How long ago `ms` was, in words. */
export function ago(ms, now = Date.now()) {
  if (!ms) return "–";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return `${s} ${t("ago_s")}`;
  if (s < 5400) return `${Math.round(s / 60)} ${t("ago_m")}`;
  return `${Math.round(s / 3600)} ${t("ago_h")}`;
}

/** A wall-clock time for axes and tables. */
export function clock(ms, withSeconds = true) {
  return new Date(ms).toLocaleTimeString(lang === "da" ? "da-DK" : "en-GB", {
    hour: "2-digit", minute: "2-digit", ...(withSeconds ? { second: "2-digit" } : {}),
  });
}
