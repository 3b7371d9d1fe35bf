// The console: plain ES module, no build step. Everything it shows comes from the service's own
// API with the key the person signed in with; the key is kept in this tab's sessionStorage and
// sent as `Authorization: Bearer` (never in a URL). Data is put into the page as text only.

const KEY_ITEM = "loyalty.console.key";
const HISTORY_SHOWN = 50;
const LIVE_ROWS = 200;
const LIVE_BACKLOG = 30; // events shown from before the live view opened
const Chart = globalThis.Chart;

const $ = (id) => document.getElementById(id);
const charts = new Map();

// ---- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function key() {
  return sessionStorage.getItem(KEY_ITEM);
}

async function api(path, { signal } = {}) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${key()}`, Accept: "application/json" },
    cache: "no-store",
    signal,
  });
  const body = await response.json().catch(() => null);
  if (response.status === 401 && key()) {
    signOut("The key is no longer accepted: sign in again.");
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// What to say when a read failed: a missing scope, an endpoint this service lacks, or the error.
function explain(error, what) {
  if (error instanceof ApiError) {
    if (error.status === 403) return `This key may not read ${what} (${error.message}).`;
    if (error.status === 404) return `${what}: not available on this service yet.`;
    if (error.status === 503) return `${what}: the service is busy or catching up; try again shortly.`;
  }
  return `${what} could not be read: ${error.message}`;
}

// ---- small DOM helpers (text only: nothing from the API is parsed as HTML) --------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const [value, className] = Array.isArray(cell) ? cell : [cell, ""];
    const td = value instanceof Node ? document.createElement("td") : el("td", value ?? "—");
    if (value instanceof Node) td.append(value);
    if (className) td.className = className;
    tr.append(td);
  }
  return tr;
}

const number = new Intl.NumberFormat();
function fmt(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return number.format(value);
  return String(value);
}
function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}
function day(iso) {
  if (!iso) return "never";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleDateString();
}
function signed(points) {
  if (points === null || points === undefined) return ["", "num"];
  return [points > 0 ? `+${fmt(points)}` : fmt(points), points < 0 ? "num neg" : "num pos"];
}
function figure(label, value, main = false) {
  const box = el("div", null, main ? "figure main" : "figure");
  box.append(el("div", label, "label"), el("div", fmt(value), "value"));
  return box;
}
function say(node, text, isError = false) {
  node.textContent = text || "";
  node.hidden = !text;
  node.classList.toggle("error", Boolean(text) && isError);
}
function humanType(type) {
  return String(type).replaceAll("_", " ");
}

// ---- charts (Chart.js, vendored) ------------------------------------------------------------

const PALETTE = ["#2f5bea", "#f79009", "#12b76a", "#ee46bc", "#7a5af8", "#06aed4", "#f04438", "#667085"];

function chart(canvasId, config) {
  charts.get(canvasId)?.destroy();
  if (!Chart) return null;
  const made = new Chart($(canvasId), {
    ...config,
    options: {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      ...config.options,
    },
  });
  charts.set(canvasId, made);
  return made;
}

// ---- signing in and out ---------------------------------------------------------------------

function showSignedIn(signedIn) {
  $("sign-in").hidden = signedIn;
  $("tabs").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  if (!signedIn) for (const panel of document.querySelectorAll(".panel")) panel.hidden = true;
}

async function signIn(event) {
  event.preventDefault();
  const given = $("key").value.trim();
  $("key").value = "";
  if (!given) return;
  sessionStorage.setItem(KEY_ITEM, given);
  try {
    await api("/v1/program");
  } catch (error) {
    sessionStorage.removeItem(KEY_ITEM);
    const text = error instanceof ApiError && error.status === 401
      ? "That key is not valid."
      : error instanceof ApiError && error.status === 403
        ? "That key lacks the read scope."
        : `The service could not be reached: ${error.message}`;
    say($("sign-in-error"), text, true);
    return;
  }
  say($("sign-in-error"), "");
  start();
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_ITEM);
  live.stop();
  showSignedIn(false);
  say($("sign-in-error"), reason || "", Boolean(reason));
}

function start() {
  showSignedIn(true);
  show("member");
}

// ---- tabs -----------------------------------------------------------------------------------

let current = null;
function show(tab) {
  current = tab;
  for (const button of document.querySelectorAll(".tab")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  }
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== tab;
  if (tab === "analytics") loadAnalytics();
  if (tab === "live") live.start();
}

// ---- member 360 -----------------------------------------------------------------------------

async function lookUp(event) {
  event?.preventDefault();
  const kind = $("lookup-kind").value;
  const value = $("lookup-value").value.trim();
  if (!value) return;
  const path = kind === "member_id"
    ? `/v1/members/${encodeURIComponent(value)}`
    : `/v1/members/lookup?${new URLSearchParams({ kind, value })}`;
  await openMember(path);
}

async function openMember(path) {
  const message = $("member-message");
  say(message, "Looking up…");
  $("member-view").hidden = true;
  let member;
  try {
    member = await api(path);
  } catch (error) {
    const text = error instanceof ApiError && error.status === 404
      ? "No member has that identity."
      : error instanceof ApiError && error.status === 422
        ? `Not a valid value: ${error.problem?.errors?.map((e) => e.message).join("; ") || error.message}`
        : explain(error, "The member");
    say(message, text, true);
    return;
  }
  say(message, "");
  renderMember(member);
  $("member-view").hidden = false;
  await Promise.all([loadLots(member.member_id), loadHistory(member.member_id)]);
}

function renderMember(member) {
  $("m-id").textContent = member.member_id;
  $("m-status").textContent = member.status + (member.merged_into ? ` into ${member.merged_into}` : "");
  $("m-tier").textContent = member.tier;
  $("m-first").textContent = day(member.first_activity_at);
  $("m-last").textContent = day(member.last_activity_at);
  const b = member.balance;
  $("m-balance").replaceChildren(
    figure("Available", b.available, true),
    figure("Pending", b.pending),
    figure("Held", b.held),
    figure("Qualifying", b.qualifying),
    figure("Lifetime earned", b.lifetime_earned),
    figure("Lifetime redeemed", b.lifetime_redeemed),
    figure("Expired", b.expired),
    figure("Tier", b.tier),
  );
  $("m-expiring").textContent = b.expiring
    ? `${fmt(b.expiring.points)} points expire on ${day(b.expiring.at)}`
    : "No points waiting to expire.";
  $("m-identities").replaceChildren(
    ...(member.identities.length
      ? member.identities.map((i) => el("li", `${i.kind}: ${i.value}`))
      : [el("li", "none (merged or forgotten)", "muted")]),
  );
  $("m-channels").replaceChildren(...member.channels.map((c) => el("li", c)));
  const segments = member.segments;
  $("m-segments").replaceChildren(
    ...(segments === undefined || segments === null
      ? [el("li", "not available on this service")]
      : segments.length
        ? segments.map((s) => el("li", s.replaceAll("_", " ")))
        : [el("li", "none")]),
  );
}

async function loadLots(memberId) {
  const body = $("m-lots").tBodies[0];
  try {
    const { lots } = await api(`/v1/members/${memberId}/lots`);
    body.replaceChildren(
      ...(lots.length
        ? lots.map((lot) => row([`#${lot.lot_id}`, [fmt(lot.points), "num"], when(lot.available_at),
          lot.expires_at ? day(lot.expires_at) : "never"]))
        : [row(["no points left in lots", "", "", ""])]),
    );
  } catch (error) {
    body.replaceChildren(row([explain(error, "Lots"), "", "", ""]));
  }
}

async function loadHistory(memberId) {
  const body = $("m-history").tBodies[0];
  try {
    // Oldest first, by pages: keep the newest HISTORY_SHOWN.
    let events = [];
    let after = 0;
    for (;;) {
      const page = await api(`/v1/members/${memberId}/history?after=${after}&limit=1000`);
      events = events.concat(page.events).slice(-HISTORY_SHOWN);
      if (page.next_after === null || page.next_after === undefined) break;
      after = page.next_after;
    }
    body.replaceChildren(
      ...events.reverse().map((e) => row([when(e.occurred_at), humanType(e.type), e.channel, signed(e.points),
        [e.position, "num"]])),
    );
  } catch (error) {
    body.replaceChildren(row([explain(error, "History"), "", "", "", ""]));
  }
}

// ---- analytics ------------------------------------------------------------------------------

function section(id) {
  const card = $(id);
  const message = card.querySelector(".message");
  const chartBox = card.querySelector(".chart");
  // Say something (an error hides the chart: nothing stale is left on show), or clear it.
  const tell = (text, isError = false) => {
    say(message, text, isError);
    if (chartBox) chartBox.hidden = isError;
  };
  return { card, message, tell };
}

async function loadAnalytics() {
  await Promise.all([loadLiability(), loadSegments(), loadChannels(), loadJourneys(), loadCampaigns()]);
}

async function loadLiability() {
  const { tell } = section("a-liability");
  try {
    const l = await api("/v1/analytics/liability");
    tell("");
    $("liability-figures").replaceChildren(
      figure(`Outstanding (${l.currency} ${l.outstanding.value})`, l.outstanding.points, true),
      figure("Available", l.available.points),
      figure("Pending", l.pending.points),
      figure("Held", l.held.points),
      figure(`Breakage (${l.breakage.rate ?? "—"})`, l.breakage.points),
    );
    chart("chart-liability", {
      type: "bar",
      data: {
        labels: l.expiring.map((e) => `next ${e.days} days`),
        datasets: [{ label: "points expiring", data: l.expiring.map((e) => e.points), backgroundColor: PALETTE[1] }],
      },
    });
  } catch (error) {
    tell(explain(error, "Liability"), true);
  }
}

async function loadSegments() {
  const { tell } = section("a-segments");
  try {
    const { segments } = await api("/v1/analytics/segments");
    tell("");
    chart("chart-segments", {
      type: "bar",
      data: {
        labels: segments.map((s) => s.segment.replaceAll("_", " ")),
        datasets: [{ label: "members", data: segments.map((s) => s.members), backgroundColor: PALETTE }],
      },
      options: { plugins: { legend: { display: false } } },
    });
  } catch (error) {
    tell(explain(error, "Segments"), true);
  }
}

async function loadChannels() {
  const { tell } = section("a-channels");
  const query = new URLSearchParams();
  if ($("range-from").value) query.set("from", $("range-from").value);
  if ($("range-to").value) query.set("to", $("range-to").value);
  try {
    const report = await api(`/v1/analytics/channels?${query}`);
    tell(report.channels.length ? "" : "No channel has activity in this range.");
    const channels = report.channels;
    chart("chart-channels", {
      type: "bar",
      data: {
        labels: channels.map((c) => c.channel),
        datasets: [
          { label: `revenue (${report.currency})`, data: channels.map((c) => Number(c.revenue)), backgroundColor: PALETTE[0] },
          { label: `points cost (${report.currency})`, data: channels.map((c) => Number(c.points_cost)), backgroundColor: PALETTE[1] },
        ],
      },
    });
    $("channels-table").tBodies[0].replaceChildren(
      ...channels.map((c) => row([c.channel, [fmt(c.active_members), "num"], [fmt(c.purchases), "num"],
        [c.revenue, "num"], [fmt(c.points_earned), "num"], [fmt(c.points_redeemed), "num"],
        [fmt(c.points_expired), "num"], [fmt(c.points_reversed), "num"], [c.redemption_rate ?? "—", "num"],
        [c.points_cost, "num"], [c.cost_ratio ?? "—", "num"]])),
    );
  } catch (error) {
    tell(explain(error, "Channel figures"), true);
  }
}

async function loadJourneys() {
  const { tell } = section("a-journeys");
  try {
    const j = await api("/v1/analytics/journeys");
    tell("");
    chart("chart-journeys", {
      type: "bar",
      data: {
        labels: j.by_channel_count.map((c) => `${c.channels} channel${c.channels === 1 ? "" : "s"}`),
        datasets: [{ label: "members", data: j.by_channel_count.map((c) => c.members), backgroundColor: PALETTE[2] }],
      },
      options: { plugins: { legend: { display: false } } },
    });
    // First channel (rows) → next channel (columns); "only" = one channel so far.
    const firsts = [...new Set(j.first_to_next.map((f) => f.first))].sort();
    const nexts = [...new Set(j.first_to_next.map((f) => f.next ?? "only"))].sort();
    const cell = new Map(j.first_to_next.map((f) => [`${f.first}\u0000${f.next ?? "only"}`, f.members]));
    const table = $("journeys-table");
    table.tHead.replaceChildren(row(["first → next", ...nexts.map((n) => [n, "num"])]));
    for (const th of table.tHead.querySelectorAll("td")) th.replaceWith(el("th", th.textContent, th.className));
    table.tBodies[0].replaceChildren(
      ...firsts.map((f) => row([f, ...nexts.map((n) => [fmt(cell.get(`${f}\u0000${n}`) ?? 0), "num"])])),
    );
  } catch (error) {
    tell(explain(error, "Journeys"), true);
  }
}

async function loadCampaigns() {
  const { tell } = section("a-campaigns");
  const pick = $("campaign-pick");
  try {
    const { campaigns } = await api("/v1/campaigns");
    if (!campaigns.length) {
      pick.hidden = true;
      tell("No campaigns yet.", true);
      return;
    }
    const chosen = pick.value;
    pick.replaceChildren(...campaigns.map((c) => {
      const option = el("option", `${c.campaign?.name ?? c.campaign_id} (${c.status})`);
      option.value = c.campaign_id;
      return option;
    }));
    pick.hidden = false;
    if (chosen && campaigns.some((c) => c.campaign_id === chosen)) pick.value = chosen;
    await loadCampaign(pick.value);
  } catch (error) {
    pick.hidden = true;
    tell(explain(error, "Campaigns"), true);
  }
}

async function loadCampaign(campaignId) {
  const { tell } = section("a-campaigns");
  try {
    const r = await api(`/v1/analytics/campaigns/${campaignId}`);
    tell("");
    const labels = r.variants.map((v) => v.variant ?? r.name);
    chart("chart-campaign", {
      type: "bar",
      data: {
        labels,
        datasets: [
          { label: "members reached", data: r.variants.map((v) => v.members), backgroundColor: PALETTE[0] },
          { label: "earns", data: r.variants.map((v) => v.earns), backgroundColor: PALETTE[2] },
          { label: "bonus points", data: r.variants.map((v) => v.bonus_points), backgroundColor: PALETTE[1], yAxisID: "money" },
          { label: "revenue", data: r.variants.map((v) => Number(v.revenue)), backgroundColor: PALETTE[4], yAxisID: "money" },
        ],
      },
      // Members and earns on the left, points and money on the right: they would flatten the counts.
      options: { scales: { y: { beginAtZero: true }, money: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } } } },
    });
  } catch (error) {
    tell(explain(error, "Campaign results"), true);
  }
}

class Restart extends Error {}

// ---- live events (GET /v1/events/live: server-sent events read through fetch, which can send
// the key in a header, unlike EventSource) --------------------------------------------------

const live = {
  controller: null,
  after: null, // the last position received: a reconnection resumes after it
  count: 0,
  paused: false,
  retry: 2000,

  start() {
    if (this.controller || this.paused) return;
    this.controller = new AbortController();
    this.run(this.controller.signal);
  },

  stop() {
    this.controller?.abort();
    this.controller = null;
    this.state("stopped", "");
  },

  state(text, tone) {
    const pill = $("live-state");
    pill.textContent = text;
    pill.className = `pill ${tone}`;
  },

  async run(signal) {
    while (!signal.aborted) {
      // One connection per attempt, closed when the attempt ends (a restart, an error, a stop).
      const attempt = new AbortController();
      const stop = () => attempt.abort();
      signal.addEventListener("abort", stop);
      try {
        const query = this.after === null ? "" : `?after=${this.after}`;
        const response = await fetch(`/v1/events/live${query}`, {
          headers: { Authorization: `Bearer ${key()}`, Accept: "text/event-stream" },
          cache: "no-store",
          signal: attempt.signal,
        });
        if (response.status === 401) { signOut("The key is no longer accepted: sign in again."); return; }
        if (!response.ok) {
          const problem = await response.json().catch(() => null);
          throw new ApiError(response.status, problem);
        }
        this.state("live", "on");
        await this.read(response.body, attempt.signal);
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof Restart) continue;
        this.state(error instanceof ApiError ? explain(error, "The live view") : "reconnecting…", "off");
        if (error instanceof ApiError && error.status === 403) return;
      } finally {
        attempt.abort();
        signal.removeEventListener("abort", stop);
      }
      if (signal.aborted) return;
      this.state("reconnecting…", "off");
      await new Promise((resolve) => setTimeout(resolve, this.retry));
    }
  },

  async read(stream, signal) {
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || signal.aborted) return;
        buffer += value.replaceAll("\r\n", "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          this.message(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } finally {
      reader.releaseLock();
    }
  },

  message(block) {
    const fields = {};
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      fields[name] = name === "data" && fields.data !== undefined ? `${fields.data}\n${value}` : value;
    }
    if (fields.retry) this.retry = Number(fields.retry) || this.retry;
    if (fields.event === "ready" && this.after === null) {
      // Opened at the head: start again a little before it, so the view is not empty (positions
      // are gapless, so the head minus N is the Nth last event).
      this.after = Math.max(0, Number(fields.id) - LIVE_BACKLOG);
      throw new Restart();
    }
    if (fields.id !== undefined) this.after = Number(fields.id);
    if (fields.event === "ready" || fields.data === undefined) return;
    this.show(JSON.parse(fields.data));
  },

  show(event) {
    this.count += 1;
    $("live-count").textContent = fmt(this.count);
    let member = "program";
    if (event.member_id) {
      member = el("a", event.member_id.slice(0, 8), "member-link mono");
      member.title = event.member_id;
      member.addEventListener("click", () => {
        $("lookup-kind").value = "member_id";
        $("lookup-value").value = event.member_id;
        show("member");
        openMember(`/v1/members/${event.member_id}`);
      });
    }
    const tr = row([[event.position, "num"], new Date(event.recorded_at).toLocaleTimeString(), humanType(event.type), member, event.channel,
      signed(event.points)]);
    tr.className = "fresh";
    tr.dataset.position = event.position;
    const body = $("live-table").tBodies[0];
    body.prepend(tr);
    while (body.rows.length > LIVE_ROWS) body.deleteRow(-1);
  },
};

// ---- wiring ---------------------------------------------------------------------------------

function wire() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(""));
  $("lookup-form").addEventListener("submit", lookUp);
  $("range-form").addEventListener("submit", (event) => { event.preventDefault(); loadChannels(); });
  $("campaign-pick").addEventListener("change", () => loadCampaign($("campaign-pick").value));
  $("live-toggle").addEventListener("click", () => {
    live.paused = !live.paused;
    $("live-toggle").textContent = live.paused ? "Resume" : "Pause";
    if (live.paused) live.stop(); else live.start();
  });
  for (const button of document.querySelectorAll(".tab")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  $("lookup-kind").addEventListener("change", () => {
    const examples = { phone: "+86 138 0013 8000", email: "name@example.com", member_id: "member id (UUID)" };
    $("lookup-value").placeholder = examples[$("lookup-kind").value] ?? "";
  });
  if (key()) start(); else showSignedIn(false);
  if (!Chart) console.warn("Chart.js did not load: charts are left out");
}

wire();
