// The consoles: plain JavaScript, no build step. Live state comes as server-sent events
// (/api/events) carrying the same bodies as GET /api/desk and /api/wallboard; actions
// are the documented API (/api/openapi.json) with the session's CSRF token.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
let csrf = null;

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, credentials: "same-origin",
                                body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401 && !path.startsWith("/api/login")) { location.href = "/login"; }
  const data = (r.headers.get("Content-Type") || "").includes("json") ? await r.json() : {};
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = String(m).padStart(h ? 2 : 1, "0"), ss = String(r).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "—";
}

function text(el, value) { el.textContent = value; return el; }

function cell(tr, value) { text(tr.insertCell(), value); }

// Receive time of the last snapshot: waits keep ticking between snapshots.
let received = Date.now();
const since = (seconds) => seconds + (Date.now() - received) / 1000;

function live(onBody) {
  const dot = $("#live");
  const source = new EventSource("/api/events");
  const handle = (ev) => { received = Date.now(); onBody(JSON.parse(ev.data)); };
  source.addEventListener("desk", handle);
  source.addEventListener("wallboard", handle);
  source.onopen = () => dot.classList.add("on");
  source.onerror = () => dot.classList.remove("on");  // EventSource reconnects by itself
}

async function whoami() {
  const me = await api("GET", "/api/me");
  csrf = me.csrf;
  $("#logout").addEventListener("click", async () => {
    await api("POST", "/api/logout");
    location.href = "/login";
  });
  return me;
}

// ------------------------------------------------------------------ login

function loginPage() {
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = $("#login-error");
    err.hidden = true;
    try {
      const me = await api("POST", "/api/login",
                           { login: $("#login").value, password: $("#password").value });
      location.href = me.role === "agent" ? "/agent" : "/supervisor";
    } catch (e) {
      text(err, e.message).hidden = false;
    }
  });
}

// ------------------------------------------------------------------ agent

const PHASES = {
  ringing: "Your phone is ringing",
  preview: "Preview playing on your phone",
  dialling: "Dialling the customer…",
  connected: "Connected",
  ended: "Ended",
};

const OUTCOMES = {
  talked: "Conversation ended",
  declined: "You declined it",
  unanswered: "Not answered: you are set not ready",
  rejected: "Your phone refused it: you are set not ready",
  withdrawn: "Withdrawn (the caller left, or it was cancelled)",
  attempt_failed: "The customer was not reached",
};

function agentPage() {
  let desk = null;
  whoami().then((me) => {
    text($("#agent-name"), me.name);
    const setState = (state) => api("POST", `/api/agents/${encodeURIComponent(me.agent)}/state`,
                                    { state }).then(() => {}, (e) => alert(e.message));
    $("#go-available").addEventListener("click", () => setState("available"));
    $("#go-not-ready").addEventListener("click", () => setState("not_ready"));
    const decide = (what) => async () => {
      const err = $("#offer-error");
      err.hidden = true;
      try {
        await api("POST", `/api/offers/${desk.offer.item_id}/${what}`);
      } catch (e) {
        text(err, e.message).hidden = false;
      }
    };
    $("#accept").addEventListener("click", decide("accept"));
    $("#decline").addEventListener("click", decide("decline"));
    live((body) => { desk = body; renderDesk(desk); });
    setInterval(() => desk && renderDesk(desk), 1000);
  });
}

function renderDesk(desk) {
  const a = desk.agent;
  const status = $("#status");
  status.className = `badge ${a.status}`;
  text(status, a.status.replace("_", " "));
  const wrap = $("#wrapup");
  wrap.hidden = !a.wrap_up_until;
  if (a.wrap_up_until) {
    text($("#wrapup-left"), duration((new Date(a.wrap_up_until) - Date.now()) / 1000));
  }
  $("#go-available").disabled = a.status !== "not_ready";
  $("#go-not-ready").disabled = a.status !== "available";

  const o = desk.offer;
  const card = $("#offer");
  card.hidden = !o;
  $("#idle").hidden = !!o;
  if (o) {
    const callback = o.kind === "callback";
    card.className = `offer ${o.kind}`;
    card.dataset.kind = o.kind;
    card.dataset.phase = o.phase;
    text($("#offer-kind"), callback ? "CALLBACK" : "Inbound call");
    text($("#offer-number"), o.number || "number withheld");
    text($("#offer-waited"), duration(since(o.waited)));
    text($("#offer-attempts"), String(o.attempts));
    text($("#offer-queue"), o.queue);
    text($("#offer-language"), o.language);
    let phase = PHASES[o.phase] || o.phase;
    if (o.decision === "accept" && o.phase === "ringing") phase += " — accepted: answer to dial";
    text($("#offer-phase"), phase);
    const open = !o.decision && (o.phase === "ringing" || (callback && o.phase === "preview"));
    $("#accept").hidden = !callback;
    $("#accept").disabled = !open;
    $("#decline").disabled = !(open && (callback || o.phase === "ringing"));
    text($("#offer-hint"), callback
      ? "Accept or Decline here or on the phone (1 / 2): the first counts. The customer is dialled only after an accept, once your phone is answered."
      : "Answer your phone to take the call.");
  }
  const last = desk.last;
  $("#last").hidden = !last || !!o;
  if (last) {
    let line = `${last.kind === "callback" ? "Callback" : "Inbound call"}: ${OUTCOMES[last.outcome] || last.outcome} at ${clock(last.at)}.`;
    if (last.outcome === "attempt_failed") {
      line += last.next_attempt_at
        ? ` Attempt ${last.attempts} failed; next try at ${clock(last.next_attempt_at)}.`
        : ` Callback ${last.item_state.replace("_", " ")} after ${last.attempts} attempt(s).`;
    }
    text($("#last-text"), line);
  }
}

// ------------------------------------------------------------------ supervisor

function supervisorPage() {
  let board = null;
  whoami().then(() => {
    $("#book").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = { queue: $("#book-queue").value, number: $("#book-number").value };
      const when = $("#book-time").value;
      if (when) body.not_before = new Date(when).toISOString();
      try {
        const cb = await api("POST", "/api/callbacks", body);
        text($("#book-result"), `booked (${cb.number})`);
        $("#book-number").value = "";
      } catch (e) {
        text($("#book-result"), e.message);
      }
    });
    live((body) => { board = body; renderBoard(board); });
    setInterval(() => board && renderBoard(board), 1000);
  });
}

function queueSection(name) {
  let sec = document.getElementById(`queue-${name}`);
  if (!sec) {
    sec = $("#queue-template").content.firstElementChild.cloneNode(true);
    sec.id = `queue-${name}`;
    sec.dataset.queue = name;
    text($(".qname", sec), `Queue ${name}`);
    $("#queues").appendChild(sec);
    const opt = document.createElement("option");
    opt.value = name;
    text(opt, name);
    $("#book-queue").appendChild(opt);
  }
  return sec;
}

function renderBoard(board) {
  const funnels = Object.fromEntries(board.stats.funnel.map((f) => [f.queue, f]));
  const series = Object.fromEntries(board.stats.series.map((s) => [s.queue, s.points]));
  for (const q of board.queues) {
    const sec = queueSection(q.name);
    const figures = $(".figures", sec);
    figures.replaceChildren();
    const figs = [
      ["Waiting", q.waiting], ["Live", q.live], ["Callbacks", q.callbacks],
      ["EWT", q.ewt === null ? "no agent" : duration(q.ewt)],
      ["EWT error", q.ewt_error === null ? "—" : `±${duration(q.ewt_error)}`],
      ["Longest wait", duration(q.items.length ? since(q.longest_wait) : 0)],
      ["Overflow", q.overflow ? "yes" : "no"], ["Hours", q.open_now ? "open" : "closed"],
    ];
    for (const [label, value] of figs) {
      const d = document.createElement("div");
      const b = document.createElement("b");
      text(b, String(value));
      d.append(b, label);
      figures.appendChild(d);
    }
    const body = $(".line tbody", sec);
    body.replaceChildren();
    for (const it of q.items) {
      const tr = body.insertRow();
      tr.className = it.kind;
      tr.dataset.item = it.id;
      cell(tr, String(it.position));
      cell(tr, it.kind === "callback" ? "CALLBACK" : "live");
      cell(tr, it.state.replace("_", " "));
      cell(tr, it.number || "withheld");
      cell(tr, duration(since(it.waited)));
      cell(tr, String(it.attempts));
      cell(tr, it.next_attempt_at ? clock(it.next_attempt_at) : "");
      cell(tr, it.offered_to || "");
      const td = tr.insertCell();
      if (it.kind === "callback") {
        const b = document.createElement("button");
        text(b, "Cancel");
        b.dataset.testid = "cancel";
        b.addEventListener("click", async () => {
          if (!confirm(`Cancel the callback to ${it.number}?`)) return;
          try { await api("POST", `/api/callbacks/${it.id}/cancel`); }
          catch (e) { alert(e.message); }
        });
        td.appendChild(b);
      }
    }
    text($(".scheduled", sec), q.scheduled.length
      ? `Booked for later: ${q.scheduled.map((s) => `${s.number} at ${clock(s.arrived_at)}`).join(", ")}`
      : "");
    renderFunnel($(".funnel tbody", sec), funnels[q.name]);
    drawChart($(".chart", sec), series[q.name] || []);
  }
  const tbody = $("#agents tbody");
  tbody.replaceChildren();
  for (const a of board.agents) {
    const tr = tbody.insertRow();
    tr.dataset.agent = a.id;
    cell(tr, a.name);
    const badge = document.createElement("span");
    badge.className = `badge ${a.status}`;
    text(badge, a.status.replace("_", " "));
    tr.insertCell().appendChild(badge);
    cell(tr, clock(a.since));
    cell(tr, a.queues.join(", "));
    cell(tr, a.reachable ? "registered" : "unreachable");
  }
}

function renderFunnel(tbody, f) {
  tbody.replaceChildren();
  if (!f) return;
  const rows = [["Offered a callback today", f.offered], ["Requested", f.requested],
                ["Accepted by an agent", f.accepted], ["Connected", f.connected],
                ["Failed", f.failed], ["Expired", f.expired], ["Cancelled", f.cancelled]];
  for (const [label, n] of rows) {
    const tr = tbody.insertRow();
    cell(tr, label);
    cell(tr, String(n));
  }
}

function drawChart(canvas, points) {
  const g = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = 24;
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#667085";
  g.fillText("last hour: depth (blue), longest wait in min (orange)", pad, 12);
  if (points.length < 2) return;
  const t0 = Date.parse(points[0].at), t1 = Date.parse(points[points.length - 1].at);
  const x = (p) => pad + (W - 2 * pad) * ((Date.parse(p.at) - t0) / Math.max(1, t1 - t0));
  const line = (values, max, color) => {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    points.forEach((p, i) => {
      const y = H - pad - (H - 2 * pad) * (values[i] / max);
      if (i) g.lineTo(x(p), y); else g.moveTo(x(p), y);
    });
    g.stroke();
  };
  const depth = points.map((p) => p.depth), wait = points.map((p) => p.longest_wait / 60);
  const maxDepth = Math.max(1, ...depth), maxWait = Math.max(1, ...wait);
  line(depth, maxDepth, "#175cd3");
  line(wait, maxWait, "#b54708");
  g.fillStyle = "#175cd3";
  g.fillText(String(maxDepth), 2, pad + 4);
  g.fillStyle = "#b54708";
  g.textAlign = "right";
  g.fillText(`${maxWait.toFixed(1)} min`, W - 2, pad + 4);
  g.textAlign = "left";
}

const PAGES = { login: loginPage, agent: agentPage, supervisor: supervisorPage };
PAGES[document.body.dataset.page]();
