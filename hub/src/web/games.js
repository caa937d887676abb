// Innovation games: the teacher console (/games), a team's page (/team, with the join form) and
// the live leaderboard for the projector (/leaderboard/{game}).

import { app, el, showError, toast } from "./app.js";
import { api, joinGame } from "./api.js";
import { lang, t, clock, num } from "./i18n.js";

const REFRESH_MS = 2000;

function field(label, input) {
  return el("label", { class: "field" }, el("span", {}, label), input);
}

function title(entry, name = "title") {
  return (lang === "da" && entry[`${name}_da`]) || entry[name] || "";
}

/** Repeats `load` every two seconds until the view goes; the first run is awaited. */
async function polled(load) {
  let timer = null;
  let gone = false;
  const tick = async () => {
    try {
      await load();
    } catch (error) {
      if (!gone) showError(error);
    }
    if (!gone) timer = setTimeout(tick, REFRESH_MS);
  };
  await tick();
  return () => {
    gone = true;
    clearTimeout(timer);
  };
}

function standingsTable(rows) {
  return el("table", { class: "table leaderboard" },
    el("thead", {}, el("tr", {}, el("th", {}, "#"), el("th", {}, t("team")), el("th", {}, t("answered")), el("th", {}, t("score")))),
    el("tbody", {}, rows.map((row) => el("tr", { dataset: { team: row.team_id } },
      el("td", {}, row.rank), el("td", {}, row.team), el("td", {}, row.answered), el("td", { class: "score" }, row.score)))));
}

// ---------------------------------------------------------------------------------------------
// Teacher console

export async function teacherConsole(main) {
  const templates = await api("/api/v1/games/templates");
  const list = el("div", { class: "games" });
  const templateSelect = el("select", { name: "template" },
    templates.map((tpl) => el("option", { value: tpl.id }, title(tpl))));
  const labSelect = el("select", { name: "lab" }, el("option", { value: "" }, t("all_labs")),
    app.labs.map((lab) => el("option", { value: lab.id }, lab.name || lab.id)));
  const duration = el("input", { name: "duration_min", type: "number", min: "1", max: "480", step: "1", value: "20" });
  const speed = el("input", { name: "speed", type: "number", min: "1", max: "1000", step: "1", value: "10" });
  const form = el("form", { class: "panel new-game", onsubmit: async (event) => {
    event.preventDefault();
    const body = {
      template: templateSelect.value,
      duration_min: Number(duration.value),
      speed: Number(speed.value),
    };
    if (labSelect.value) body.labs = [labSelect.value];
    try {
      await api("/api/v1/games", { method: "POST", body });
      await refresh();
    } catch (error) {
      showError(error);
    }
  } },
    el("h3", {}, t("new_game")),
    field(t("template"), templateSelect), field(t("lab"), labSelect),
    field(t("duration_min"), duration), field(t("speed"), speed),
    el("button", { type: "submit", class: "primary" }, t("create")));
  main.replaceChildren(el("section", { class: "teacher" }, el("h2", {}, t("teacher_console")), form, list));

  async function act(game, action) {
    try {
      await api(`/api/v1/games/${game.id}/${action}`, { method: "POST" });
      await refresh();
    } catch (error) {
      showError(error);
    }
  }

  async function downloadCsv(game) {
    const response = await fetch(`/api/v1/games/${game.id}/results.csv`, {
      headers: { Authorization: `Bearer ${sessionStorage.getItem("demolab.token")}` },
    });
    if (!response.ok) return toast(`${response.status}`, "error");
    const link = el("a", { href: URL.createObjectURL(await response.blob()), download: `${game.id}-results.csv` });
    link.click();
    URL.revokeObjectURL(link.href);
  }

  function gameCard(game) {
    const buttons = {
      open: ["start"], running: ["pause", "end"], paused: ["resume", "end"], ended: [],
    }[game.phase];
    const scores = el("table", { class: "table" },
      el("thead", {}, el("tr", {}, el("th", {}, t("team")),
        game.challenges.map((c) => el("th", {}, c.id)), el("th", {}, t("score")))),
      el("tbody", {}, game.teams.map((team) => {
        const standing = game.standings.find((s) => s.team_id === team.id);
        return el("tr", {}, el("td", {}, team.name), game.challenges.map((c) => {
          const answer = team.answers.find((a) => a.challenge === c.id);
          const hints = team.hints.filter((h) => h.challenge === c.id).length;
          return el("td", { title: answer?.reason ?? "" },
            answer ? `${answer.points}` : "–", hints ? ` (−${hints} ${t("hint")})` : "");
        }), el("td", { class: "score" }, standing?.score ?? 0));
      })));
    const key = el("details", {}, el("summary", {}, t("answer_key")),
      el("ul", {}, game.key.map((k) => el("li", {}, `${k.challenge}: `,
        k.truth == null ? "–" : typeof k.truth === "number" && k.truth > 1e12 ? clock(k.truth) : String(typeof k.truth === "number" ? num(k.truth) : k.truth)))));
    return el("article", { class: "panel game", dataset: { game: game.id, phase: game.phase } },
      el("div", { class: "game-head" },
        el("h3", {}, game.name),
        el("span", { class: `chip phase ${game.phase}` }, t(`phase_${game.phase}`)),
        el("span", { class: "code", title: t("join_code") }, game.code)),
      el("p", { class: "muted" }, `${game.labs.join(", ")} · ${Math.round(game.duration_ms / 60000)} min · ${game.speed}×`,
        game.ends_at_ms && game.phase !== "ended" ? ` · ${t("ends")} ${clock(game.ends_at_ms)}` : ""),
      el("div", { class: "actions" },
        buttons.map((action) => el("button", { type: "button", class: action === "end" ? "" : "primary", dataset: { action },
          onclick: () => act(game, action) }, t(action))),
        el("a", { href: `/leaderboard/${game.id}`, "data-link": true }, t("leaderboard")),
        el("button", { type: "button", class: "ghost", onclick: () => downloadCsv(game) }, t("results_csv"))),
      scores, key);
  }

  async function refresh() {
    const games = await api("/api/v1/games");
    list.replaceChildren(...(games.length ? games.map(gameCard) : [el("p", { class: "muted" }, t("no_games"))]));
  }
  const stop = await polled(refresh);
  return { destroy: stop };
}

// ---------------------------------------------------------------------------------------------
// A team's page

function joinForm(main, onJoined) {
  const code = el("input", { name: "code", autocomplete: "off", maxlength: "6", required: true, class: "code-input" });
  const team = el("input", { name: "team", maxlength: "40", required: true });
  main.replaceChildren(el("form", { class: "panel login join", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await joinGame(code.value, team.value);
      await onJoined();
    } catch (error) {
      showError(error);
    }
  } },
    el("h2", {}, t("join_game")),
    field(t("join_code"), code), field(t("team_name"), team),
    el("button", { type: "submit", class: "primary" }, t("join"))));
}

export async function teamPage(main, onJoined) {
  if (!app.principal?.team) {
    joinForm(main, onJoined);
    return null;
  }
  const head = el("div", { class: "team-head" });
  const challenges = el("div", { class: "challenges" });
  const machines = el("div", { class: "panel" }, el("h3", {}, t("your_machines")),
    el("ul", { class: "machine-links" }, [...app.twins.values()].map((twin) =>
      el("li", {}, el("a", { href: `/machine/${twin.lab}/${twin.machine}`, "data-link": true }, `${twin.lab}/${twin.machine}`),
        " ", el("span", { class: "muted" }, twin.kind)))));
  main.replaceChildren(el("section", { class: "team" }, head, challenges, machines));
  let shown = "";

  function challengeCard(game, c) {
    const input = el("input", { name: "value", required: true, placeholder: c.type === "fault-machine" ? "lab/machine" : "" });
    const answered = c.answer;
    const periods = c.type === "energy-wasted" && game.periods
      ? el("p", { class: "muted" },
        `${t("period_reference")}: ${clock(game.periods.reference[0])}–${clock(game.periods.reference[1])} · `,
        `${t("period_measured")}: ${clock(game.periods.measured[0])}–${clock(game.periods.measured[1])}`)
      : null;
    return el("article", { class: "panel challenge", dataset: { challenge: c.id } },
      el("h3", {}, lang === "da" ? c.question_da : c.question, el("span", { class: "muted small" }, ` · ${c.points} ${t("points")}`)),
      periods,
      c.hints.map((h) => el("p", { class: "hint" }, `${t("hint_label")}: ${lang === "da" ? h.text_da : h.text} (−${h.cost})`)),
      answered
        ? el("p", { class: "answered" }, `${t("your_answer")}: ${typeof answered.value === "number" && answered.value > 1e12 ? clock(answered.value) : answered.value} → ${c.score} ${t("points")} · ${answered.reason}`)
        : el("form", { class: "answer", onsubmit: async (event) => {
          event.preventDefault();
          const raw = input.value.trim();
          let value = raw;
          if (c.type === "fault-start") {
            // A clock time today, as people read it off a chart.
            const [h, m, s = "0"] = raw.split(":");
            const at = new Date();
            at.setHours(Number(h), Number(m), Number(s), 0);
            value = Number.isFinite(at.getTime()) && raw.includes(":") ? at.getTime() : Number(raw);
          } else if (c.type !== "fault-machine") {
            value = Number(raw.replace(",", "."));
          }
          try {
            await api("/api/v1/team/answers", { method: "POST", body: { challenge: c.id, value } });
            await refresh(true);
          } catch (error) {
            showError(error);
          }
        } },
        field(c.type === "fault-start" ? t("answer_time") : t("your_answer"), input),
        el("button", { type: "submit", class: "primary" }, t("send")),
        c.hints_left ? el("button", { type: "button", class: "ghost", onclick: async () => {
          try {
            await api("/api/v1/team/hints", { method: "POST", body: { challenge: c.id } });
            await refresh(true);
          } catch (error) {
            showError(error);
          }
        } }, `${t("hint")} (−${c.next_hint_cost})`) : null));
  }

  async function refresh(force = false) {
    const game = await api("/api/v1/team");
    head.replaceChildren(
      el("h2", {}, lang === "da" ? game.title_da : game.title, " · ", game.team),
      el("p", {}, lang === "da" ? game.story_da : game.story),
      el("p", { class: "status" }, el("span", { class: `chip phase ${game.phase}` }, t(`phase_${game.phase}`)),
        ` ${t("score")}: `, el("strong", { class: "team-score" }, game.score),
        game.ends_at_ms && game.phase !== "ended" ? ` · ${t("ends")} ${clock(game.ends_at_ms)}` : "",
        " · ", el("a", { href: `/leaderboard/${game.game}`, "data-link": true }, t("leaderboard"))));
    // Redrawn only when something changed, so a half-typed answer survives the refresh.
    const digest = JSON.stringify([game.phase, game.periods, game.challenges.map((c) => [c.answer, c.hints.length])]);
    if (force || digest !== shown) {
      shown = digest;
      challenges.replaceChildren(...game.challenges.map((c) => challengeCard(game, c)));
    }
  }
  const stop = await polled(refresh);
  return { destroy: stop };
}

// ---------------------------------------------------------------------------------------------
// The projector's leaderboard

export async function leaderboardScreen(main, game) {
  const board = el("div", { class: "board" });
  main.replaceChildren(el("section", { class: "leaderboard-screen" },
    el("h2", {}, t("leaderboard")), board,
    el("p", { class: "muted small" }, t("demo_hint"))));
  const stop = await polled(async () => {
    const rows = await api(`/api/v1/games/${game}/leaderboard`);
    board.replaceChildren(rows.length ? standingsTable(rows) : el("p", { class: "muted" }, t("no_teams")));
  });
  return { destroy: stop };
}

export function gamesLink() {
  return ["teacher", "operator", "admin"].includes(app.principal?.role) && !app.principal?.team
    ? el("a", { href: "/games", "data-link": true }, t("games"))
    : null;
}

