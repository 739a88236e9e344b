// The operations console's page: no framework, no CDN. The token lives in sessionStorage and goes out as
// an Authorization header (never a cookie), and every value from the API is set as text, never as HTML.
"use strict";

// lastSeq: the highest alert seq shown (null: nothing loaded yet); filters: bumped when the filters change.
const state = {
  token: sessionStorage.getItem("fleetwatch-token"), me: null, lastSeq: null, filters: 0, polling: false,
  selected: null,
};
const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && path !== "/api/login") { logout(); throw new Error("session ended"); }
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(body && body.detail ? JSON.stringify(body.detail) : response.statusText);
  return body;
}

const may = (permission) => state.me && state.me.permissions.includes(permission);

// --- login ------------------------------------------------------------------------------------------
$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const answer = await api("/api/login", {
      method: "POST",
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    state.token = answer.access_token;
    sessionStorage.setItem("fleetwatch-token", state.token);
    await start();
  } catch (error) {
    $("login-error").textContent = `login refused: ${error.message}`;
  }
});

function logout() {
  sessionStorage.removeItem("fleetwatch-token");
  state.token = null;
  location.reload();
}
$("logout").addEventListener("click", logout);

async function start() {
  state.me = await api("/api/me");
  $("who").textContent = `${state.me.username} (${state.me.role})`;
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("audit-panel").hidden = !may("read_audit");
  const reports = inPanel("reports-panel", loadReports);
  const windowAlerts = inPanel("window-alerts-panel", loadWindowAlerts);
  // Each panel loads on its own: one that fails (the registry unreachable, say) leaves the others working.
  await Promise.all([pollAlerts(), inPanel("models-panel", loadModels)(), reports(), windowAlerts(),
    inPanel("audit-panel", loadAudit)()]);
  setInterval(pollAlerts, 2000);
  setInterval(reports, 15000);
  setInterval(windowAlerts, 15000);
}

function inPanel(panelId, load) {
  return async () => {
    const panel = $(panelId);
    let note = panel.querySelector(".panel-error");
    try {
      await load();
      note?.remove();
    } catch (error) {
      note ??= panel.appendChild(el("p", undefined, "error panel-error"));
      note.textContent = `not loaded: ${error.message}`;
    }
  };
}

// --- alerts (live: polled every 2 s for the alerts stored after the newest one shown) ---------------
// The first load shows the newest; later polls read what came after, oldest first, a page at a time until
// caught up, so a burst larger than one page is shown whole (the table keeps the newest 300 rows).
const ALERT_PAGE = 200;

function filterQuery() {
  const query = new URLSearchParams();
  for (const [name, id] of [["severity", "filter-severity"], ["entity", "filter-entity"], ["detector", "filter-detector"]]) {
    if ($(id).value) query.set(name, $(id).value);
  }
  return query;
}

function alertRow(alert) {
  const row = el("tr");
  row.dataset.id = alert.id;
  row.append(
    el("td", alert.seq), el("td", alert.detected_at.slice(11, 19)), el("td", alert.stream),
    el("td", alert.entity), el("td", alert.severity, `sev-${alert.severity}`),
    el("td", alert.severity_score.toFixed(2)), el("td", alert.fired.join(", ")),
  );
  row.addEventListener("click", () => openAlert(alert.id));
  return row;
}

async function pollAlerts() {
  if (state.polling) return; // a poll still paging through a burst: the next one starts where it ends
  state.polling = true;
  const filters = state.filters;
  try {
    const body = $("alerts").tBodies[0];
    let full = true;
    while (full) {
      const query = filterQuery();
      if (state.lastSeq !== null) query.set("after", state.lastSeq);
      query.set("limit", ALERT_PAGE);
      const alerts = await api(`/api/alerts?${query}`);
      if (filters !== state.filters) return; // the filters changed meanwhile: these rows belong to the old ones
      const oldestFirst = state.lastSeq === null ? alerts.reverse() : alerts;
      full = state.lastSeq !== null && alerts.length === ALERT_PAGE;
      state.lastSeq ??= 0;
      for (const alert of oldestFirst) {
        body.prepend(alertRow(alert));
        state.lastSeq = Math.max(state.lastSeq, alert.seq);
      }
      while (body.rows.length > 300) body.deleteRow(-1);
    }
    $("live").textContent = `live · ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    $("live").textContent = `not updating: ${error.message}`;
  } finally {
    if (filters === state.filters) state.polling = false; // else the poll for the new filters is running
  }
}

$("apply-filters").addEventListener("click", () => {
  $("alerts").tBodies[0].replaceChildren();
  state.lastSeq = null;
  state.filters += 1;
  state.polling = false;
  pollAlerts();
});

async function openAlert(id) {
  const alert = await api(`/api/alerts/${encodeURIComponent(id)}`);
  state.selected = alert;
  for (const row of $("alerts").tBodies[0].rows) row.classList.toggle("selected", row.dataset.id === id);
  $("alert-panel").hidden = false;
  $("alert-title").textContent = `${alert.entity} · ${alert.severity} · v${alert.model_version}`;
  const controls = Object.entries(alert.controls).map(([kind, value]) => `${kind}: ${value}`).join(", ");
  const label = alert.label ? ` · labelled ${alert.label.verdict} by ${alert.label.by}` : "";
  $("alert-controls").textContent = `controls on ${alert.entity}: ${controls || "none"}${label}`;
  const detectors = $("alert-detectors").tBodies[0];
  detectors.replaceChildren(...alert.report.detectors.map((d) => {
    const row = el("tr");
    row.append(el("td", d.name), el("td", d.mode), el("td", d.score.toFixed(4)), el("td", d.threshold.toFixed(4)),
      el("td", d.verdict < 0 ? "anomaly" : "normal", d.verdict < 0 ? "anomaly" : ""));
    return row;
  }));
  const features = $("alert-features").tBodies[0];
  features.replaceChildren(...alert.report.standout_features.map((f) => {
    const row = el("tr");
    row.append(el("td", f.name), el("td", f.value.toFixed(3)), el("td", f.z.toFixed(2)));
    return row;
  }));
  $("alert-event").textContent = JSON.stringify(alert.report.event, null, 2);
  renderAlertActions(alert);
}

function renderAlertActions(alert) {
  const box = $("alert-actions");
  box.replaceChildren();
  const eventId = alert.event_id;
  const entityActions = [
    ["lock_account", "Lock account", alert.entity, true],
    ["unlock_account", "Unlock account", alert.entity, false],
    ["require_step_up", "Require extra authentication", alert.entity, false],
    ["block_transaction", "Block transaction", eventId, true],
    ["release_transaction", "Release transaction", eventId, false],
  ];
  if (may("intervene")) {
    for (const [action, title, target, danger] of entityActions) {
      box.append(actionButton(title, `${title}: ${target}`, danger, (reason) =>
        api("/api/interventions", {
          method: "POST", body: JSON.stringify({ action, target, reason, alert_id: alert.id }),
        })));
    }
  }
  if (may("label_alerts")) {
    for (const verdict of ["true_positive", "false_positive"]) {
      const title = verdict === "true_positive" ? "Mark true positive" : "Mark false positive";
      box.append(actionButton(title, `${title}: alert ${alert.id}`, false, (reason) =>
        api(`/api/alerts/${encodeURIComponent(alert.id)}/label`, {
          method: "POST", body: JSON.stringify({ verdict, reason }),
        })));
    }
  }
}

// --- the confirmation step: names the target, asks for a reason ----------------------------------
function actionButton(title, confirmText, danger, run) {
  const button = el("button", title, danger ? "danger" : "");
  button.addEventListener("click", () => confirmAction(title, confirmText, run));
  return button;
}

function confirmAction(title, text, run) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-reason").value = "";
  $("confirm-error").textContent = "";
  $("confirm-ok").onclick = async (event) => {
    event.preventDefault();
    const reason = $("confirm-reason").value.trim();
    if (reason.length < 3) { $("confirm-error").textContent = "give a reason"; return; }
    $("confirm-ok").disabled = true; // one request per confirmation: a second click while it runs does nothing
    try {
      await run(reason);
      dialog.close();
      if (state.selected) await openAlert(state.selected.id);
      await Promise.all([loadModels(), loadAudit()]);
    } catch (error) {
      $("confirm-error").textContent = `refused: ${error.message}`;
    } finally {
      $("confirm-ok").disabled = false;
    }
  };
  dialog.showModal();
}

// --- models: versions, evaluation, threshold picker, promote / rollback -------------------------
async function loadModels() {
  const streams = await api("/api/models");
  const box = $("models");
  box.replaceChildren();
  for (const stream of streams) {
    box.append(el("h3", `${stream.stream}: deployed v${stream.deployed ?? "none"}`));
    if (may("manage_models")) {
      // from_version: a second click or a retry finds v<deployed> gone and is refused, not rolled back again.
      box.append(actionButton("Roll back", `Roll back ${stream.stream} from v${stream.deployed}`, true, (reason) =>
        api(`/api/models/${stream.stream}/rollback`, {
          method: "POST", body: JSON.stringify({ reason, from_version: stream.deployed ?? undefined }),
        })));
    }
    const table = el("table");
    const head = el("tr");
    for (const column of ["version", "created", "fleet F1", "note", ""]) head.append(el("th", column));
    table.append(head);
    for (const version of stream.versions.slice().reverse()) {
      const row = el("tr");
      row.append(el("td", `v${version.version}${version.deployed ? " *" : ""}`));
      if (version.refused) {
        // It does not verify (another key, tampered): why, and nothing to promote or derive thresholds from.
        const why = el("td", `refused: ${version.refused}`, "error");
        why.colSpan = 4;
        row.append(why);
      } else {
        const fleet = version.evaluation && version.evaluation.fleet;
        row.append(el("td", version.created_at.slice(0, 19)), el("td", fleet ? fleet.f1.toFixed(3) : ""),
          el("td", version.note));
        const cell = el("td");
        if (may("manage_models") && !version.deployed) {
          cell.append(actionButton("Promote", `Promote ${stream.stream} v${version.version}`, false, (reason) =>
            api(`/api/models/${stream.stream}/promote`, {
              method: "POST", body: JSON.stringify({ version: version.version, reason }),
            })));
        }
        row.append(cell);
      }
      table.append(row);
    }
    box.append(table);
    const deployed = stream.versions.find((v) => v.deployed && !v.refused);
    if (deployed) box.append(thresholdPicker(stream, deployed));
  }
}

function thresholdPicker(stream, version) {
  const wrapper = el("div");
  const measured = version.detectors.some((d) => Object.keys(d.rates).length);
  wrapper.append(el("h3", `Threshold methods of v${version.version} (offset on score_samples per method)`));
  wrapper.append(el("p", measured
    ? "Beside each: its false-positive rate and recall on the version's labelled test part, were it active."
    : "No false-positive rate or recall measured: this version was trained without labels."));
  const table = el("table");
  const head = el("tr");
  head.append(el("th", "detector"), el("th", "mode"));
  for (const method of stream.methods) head.append(el("th", method));
  table.append(head);
  const choices = {};
  for (const detector of version.detectors) {
    const row = el("tr");
    row.append(el("td", detector.name), el("td", detector.mode));
    for (const method of stream.methods) {
      const cell = el("td");
      const input = el("input");
      input.type = "radio";
      input.name = `method-${detector.name}`;
      input.value = method;
      input.checked = method === detector.active_method;
      input.disabled = !may("manage_models");
      input.addEventListener("change", () => { choices[detector.name] = method; });
      const label = el("label");
      // One figure a line, none broken inside (no-break spaces): seven methods side by side stay readable.
      label.append(input, `\u00a0${detector.thresholds[method].toFixed(4)}`);
      const rates = detector.rates[method];
      if (rates) {
        label.append(el("br"), `FPR\u00a0${(100 * rates.fpr).toFixed(1)}%`, el("br"),
          `recall\u00a0${(100 * rates.recall).toFixed(0)}%`);
      }
      cell.append(label);
      row.append(cell);
    }
    table.append(row);
  }
  wrapper.append(table);
  if (may("manage_models")) {
    wrapper.append(actionButton("Apply threshold methods", `New version of ${stream.stream} from v${version.version} with the chosen methods`,
      false, (reason) => api(`/api/models/${stream.stream}/thresholds`, {
        method: "POST", body: JSON.stringify({ version: version.version, methods: choices, reason }),
      })));
  }
  return wrapper;
}

// --- window reports: anomaly rate chart (SVG) ---------------------------------------------------
async function loadReports() {
  const series = await api("/api/reports?window_s=60&limit=120");
  const svg = $("rate-chart");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const [width, height, pad] = [640, 160, 30];
  const axis = document.createElementNS(ns, "line");
  for (const [k, v] of Object.entries({ x1: pad, y1: height - pad, x2: width, y2: height - pad, class: "chart-axis" })) axis.setAttribute(k, v);
  svg.append(axis);
  const caption = document.createElementNS(ns, "text");
  caption.setAttribute("x", pad);
  caption.setAttribute("y", 14);
  caption.setAttribute("class", "chart-label");
  if (!series.length) { caption.textContent = "no window reports yet (the summarizer writes them)"; svg.append(caption); return; }
  const top = Math.max(...series.map((s) => s.anomaly_rate), 1e-6);
  const points = series.map((s, i) => {
    const x = pad + (i / Math.max(series.length - 1, 1)) * (width - pad - 10);
    const y = height - pad - (s.anomaly_rate / top) * (height - 2 * pad);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("class", "chart-line");
  svg.append(line);
  caption.textContent = `max ${(top * 100).toFixed(2)} % · ${series.length} windows from ${series[0].window_start.slice(0, 16)}`;
  svg.append(caption);
}

// --- rate alerts and entity escalations (the summarizer's, per window) -----------------------------
function windowAlertReason(alert) {
  if (alert.type === "entity_escalation") return `over ${alert.limit} alerts in the window`;
  const baseline = alert.baseline === null ? "no baseline yet" : `baseline ${(alert.baseline * 100).toFixed(2)} %`;
  return `rate ${(alert.rate * 100).toFixed(2)} % of ${alert.scored} (${alert.criteria.join(", ")}; ${baseline})`;
}

async function loadWindowAlerts() {
  const alerts = await api("/api/window-alerts?limit=50");
  $("window-alerts").tBodies[0].replaceChildren(...alerts.map((a) => {
    const row = el("tr");
    row.append(el("td", a.seq), el("td", a.raised_at.slice(5, 19).replace("T", " ")), el("td", a.stream),
      el("td", a.type.replace("_", " ")), el("td", `${a.window_start.slice(5, 16).replace("T", " ")} + ${a.window_s} s`),
      el("td", a.entity ?? ""), el("td", a.alerts), el("td", windowAlertReason(a)));
    return row;
  }));
}

// --- audit ---------------------------------------------------------------------------------------
async function loadAudit() {
  if (!may("read_audit")) return;
  const entries = await api("/api/audit?limit=20");
  $("audit").tBodies[0].replaceChildren(...entries.map((e) => {
    const row = el("tr");
    row.append(el("td", e.seq), el("td", e.acted_at.slice(11, 19)), el("td", e.actor), el("td", e.action),
      el("td", e.target), el("td", e.reason), el("td", `${JSON.stringify(e.before)} → ${JSON.stringify(e.after)}`));
    return row;
  }));
}

$("verify-audit").addEventListener("click", async () => {
  const verdict = await api("/api/audit/verify");
  $("audit-verdict").textContent = verdict.ok
    ? `chain intact (${verdict.checked} records)` : `BROKEN at record ${verdict.first_bad_seq}: ${verdict.problem}`;
});

if (state.token) start().catch(() => logout());
