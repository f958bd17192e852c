/* The Cockpit page of arbor (docs/cockpit.md). Everything it shows and does goes
 * through the arbord D-Bus daemon (org.arbor.Arbor1 on the system bus): properties,
 * History, PackageDiff, EtcDiff, and the methods that start transactions. */
"use strict";

const NAME = "org.arbor.Arbor1";
const ROOT = "/org/arbor/Arbor1";
const SYSROOT = "org.arbor.Arbor1.Sysroot";
const TRANSACTION = "org.arbor.Arbor1.Transaction";

let client = null;
let state = {};          // the Sysroot's properties, unwrapped
let running = null;      // {path, method, percent, text, download} of our transaction
let offline = false;     // the last check could not reach the remote
const diffs = {};        // "from..to" → package diff, read once

/* cockpit.js gives variants as {t, v}; a{sv} as objects of variants. */
function unwrap(v) {
    if (Array.isArray(v))
        return v.map(unwrap);
    if (v && typeof v === "object") {
        const keys = Object.keys(v);
        if (keys.length === 2 && "t" in v && "v" in v)
            return unwrap(v.v);
        const out = {};
        for (const k of keys)
            out[k] = unwrap(v[k]);
        return out;
    }
    return v;
}

function $(id) {
    return document.getElementById(id);
}

function text(tag, content, cls) {
    const e = document.createElement(tag);
    e.textContent = content;
    if (cls)
        e.className = cls;
    return e;
}

function bytes(n) {
    const units = ["B", "kB", "MB", "GB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) {
        n /= 1000;
        i++;
    }
    return (i ? n.toFixed(1) : n) + " " + units[i];
}

function empty(o) {
    return !o || Object.keys(o).length === 0;
}

function showError(message) {
    $("error-text").textContent = message || "";
    $("error").hidden = !message;
}

/* A table row of cells (strings or elements). */
function row(cells) {
    const tr = document.createElement("tr");
    tr.className = "pf-v5-c-table__tr";
    for (const c of cells) {
        const td = document.createElement("td");
        td.className = "pf-v5-c-table__td";
        if (typeof c === "string")
            td.textContent = c;
        else
            td.appendChild(c);
        tr.appendChild(td);
    }
    return tr;
}

/* The status chip: one word for where the system is. */
function chip() {
    const status = state.UpdateStatus || {};
    if (running && running.method !== "Check") {
        if (running.task === "download" || running.download)
            return ["downloading", "Downloading " + running.percent + "%"];
        const verb = { Rollback: "Rolling back ", Reset: "Resetting " }[running.method] || "Installing ";
        return ["busy", verb + running.percent + "%"];
    }
    if (offline)
        return ["offline", "Offline"];
    if (status.state === "failed" && status.rolled_back)
        return ["rolled-back", "Rolled back"];
    if (status.state === "failed")
        return ["failed", "Update failed"];
    if (!empty(state.AvailableUpdate))
        return ["available", "Update available: " + state.AvailableUpdate.version];
    if (state.UpdateState === "staged" || state.UpdateState === "pending-reboot")
        return ["reboot", "Staged, reboot needed"];
    if (state.UpdateState === "busy")
        return ["busy", "Busy"];
    return ["current", "Up to date"];
}

function packageList(p) {
    const ul = document.createElement("ul");
    ul.className = "packages";
    for (const c of p.upgraded || [])
        ul.appendChild(text("li", c.name + " " + c.from + " → " + c.to));
    for (const c of p.downgraded || [])
        ul.appendChild(text("li", c.name + " " + c.from + " → " + c.to + " (downgrade)"));
    for (const c of p.added || [])
        ul.appendChild(text("li", "added " + c.name + " " + c.version));
    for (const c of p.removed || [])
        ul.appendChild(text("li", "removed " + c.name + " " + c.version));
    if (!ul.children.length)
        ul.appendChild(text("li", "no package changes"));
    return ul;
}

function renderAvailable() {
    const div = $("available");
    div.textContent = "";
    const a = state.AvailableUpdate;
    if (empty(a)) {
        const status = state.UpdateStatus || {};
        div.appendChild(text("p", status.last_check ? "No update: the system runs the newest version offered to it." : "Not checked yet.", "muted"));
        return;
    }
    div.appendChild(text("p", "Version " + a.version + " on " + a.remote + ":" + a.channel +
        (a.critical ? " (critical)" : "") + ", published " +
        new Date(a.published * 1000).toLocaleString() + ". Download: " +
        bytes(a.download_bytes) + " (" + a.method + ")."));
    if (a.release_notes)
        div.appendChild(text("p", "Release notes: " + a.release_notes));
    if (a.packages)
        div.appendChild(packageList(a.packages));
}

/* Package changes from `from` to `to` (commits), read once with PackageDiff. */
function diff(from, to, cell) {
    const key = from + ".." + to;
    const show = d => cell.replaceChildren(d ? packageList(d) : text("span", "—", "muted"));
    if (key in diffs)
        return show(diffs[key]);
    client.call(ROOT, SYSROOT, "PackageDiff", [from, to, {}])
        .then(([d]) => { diffs[key] = unwrap(d); show(diffs[key]) })
        .catch(() => { diffs[key] = null; show(null) });
}

function renderDeployments() {
    const body = $("deployments").querySelector("tbody");
    body.textContent = "";
    const rows = [];
    if (!empty(state.StagedDeployment))
        rows.push(Object.assign({ role: "staged" }, state.StagedDeployment));
    for (const d of state.Deployments || [])
        rows.push(d);
    rows.forEach((d, i) => {
        const cell = document.createElement("span");
        const older = rows[i + 1];
        if (older && older.commit && d.commit && older.commit !== d.commit)
            diff(older.commit, d.commit, cell);
        else
            cell.appendChild(text("span", "—", "muted"));
        body.appendChild(row([d.role || (d.booted ? "booted" : ""), d.version || "",
            (d.origin && d.origin.refspec) || "", text("code", (d.commit || "").slice(0, 12), "commit"),
            cell]));
    });
    /* Listed before the reboot: what the next boot keeps of this machine's /etc
     * against the update's new defaults. */
    const next = $("next-conflicts");
    next.textContent = "";
    for (const p of state.EtcConflicts || [])
        next.appendChild(text("p", "Next boot: /etc/" + p + " was changed here and by the update; your version stays, the new default is saved as /etc/" + p + ".arbor-dist.", "muted"));
}

const CHANGE = { added: "Added", modified: "Modified", removed: "Removed" };
const OUTCOME = {
    "kept-local": "kept local",
    "kept-deleted": "kept deleted",
    "took-new-default": "took the new default",
    "conflict": "conflict",
    "merged-entries": "merged entry by entry",
};

/* How /etc differs from the image (EtcDiff), and for a deployment not booted yet
 * what its merge did or will do. */
function renderEtc() {
    client.call(ROOT, SYSROOT, "EtcDiff", [{}])
        .then(([d]) => {
            d = unwrap(d);
            const body = $("etc").querySelector("tbody");
            body.textContent = "";
            for (const e of d.drift || [])
                body.appendChild(row(["/etc/" + e.path, CHANGE[e.change] || e.change, (e.aspects || []).join(", ")]));
            if (!(d.drift || []).length)
                body.appendChild(row([text("span", "No changes: /etc is as the image ships it.", "muted"), "", ""]));
            const merge = $("etc-merge");
            merge.textContent = "";
            const conflicts = (d.merge || []).filter(m => m.outcome === "conflict");
            for (const c of conflicts)
                merge.appendChild(text("p", "Conflict in /etc/" + c.path + ": your version stays; the new default is in /etc/" + c.saved + ".", "muted"));
        })
        .catch(e => showError(e.message));
}

function renderPolicy() {
    const p = state.AutomaticUpdatePolicy || {};
    const form = $("policy");
    if (form.contains(document.activeElement))
        return; // the user is editing it
    for (const input of form.querySelectorAll("input")) {
        if (input.type === "checkbox")
            input.checked = !!p[input.name];
        else
            input.value = p[input.name] || "";
    }
}

function renderHistory() {
    client.call(ROOT, SYSROOT, "History", [{ limit: { t: "u", v: 10 } }])
        .then(([list]) => {
            const body = $("history").querySelector("tbody");
            body.textContent = "";
            for (const h of unwrap(list))
                body.appendChild(row([new Date(h.started * 1000).toLocaleString(), h.kind,
                    h.command, h.result || "running"]));
        })
        .catch(() => {});
}

function renderProgress() {
    const p = $("progress");
    p.hidden = !running;
    if (!running)
        return;
    $("bar").style.width = running.percent + "%";
    $("progress-measure").textContent = running.percent + "%";
    let t = running.text || running.task || running.method;
    const d = running.download;
    if (d && d.total)
        t = "Downloading " + bytes(d.done) + " of " + bytes(d.total) +
            (d.rate ? " at " + bytes(d.rate) + "/s" : "");
    $("progress-text").textContent = t;
}

/* Beside Install: how the update would be applied (live, soft-reboot, kexec or
   reboot) and why, from the offer's estimate or, once staged, the staged choice. */
function renderApplyHint() {
    const a = state.AvailableUpdate;
    const staged = (state.UpdateStatus || {}).activation;
    const act = (!empty(a) && !empty(a.activation)) ? a.activation : staged;
    $("apply-hint").textContent = empty(act) ? "" : "Applies by " + act.step + " — " + act.summary;
}

function render() {
    const [key, label] = chip();
    const c = $("chip");
    c.dataset.state = key;
    c.firstElementChild.textContent = label;
    const busy = !!running || state.UpdateState === "busy";
    $("check").disabled = busy;
    $("download").disabled = busy || empty(state.AvailableUpdate);
    $("install").disabled = busy || empty(state.AvailableUpdate);
    $("rollback").disabled = busy || empty(state.RollbackDeployment);
    $("reboot").disabled = busy || !(state.UpdateState === "staged" || state.UpdateState === "pending-reboot");
    $("reset").disabled = busy || !empty(state.StagedDeployment);
    renderAvailable();
    renderApplyHint();
    renderDeployments();
    renderPolicy();
    renderProgress();
}

function refresh() {
    return client.call(ROOT, "org.freedesktop.DBus.Properties", "GetAll", [SYSROOT])
        .then(([props]) => {
            state = unwrap(props);
            render();
            renderHistory();
            renderEtc();
        })
        .catch(e => showError(e.message));
}

/* Starts METHOD the race-free way: wait-for-start, subscribe, Start. ARGS go before
 * the options; OPTIONS are booleans. */
function start(method, options, args, signature) {
    showError(null);
    const opts = { "wait-for-start": { t: "b", v: true } };
    for (const k in options)
        opts[k] = { t: "b", v: options[k] };
    return client.call(ROOT, SYSROOT, method, (args || []).concat([opts]), { type: (signature || "") + "a{sv}" })
        .then(([path]) => {
            running = { path, method, percent: 0, text: "", task: "", download: null };
            render();
            return client.call(path, TRANSACTION, "Start", []);
        })
        .catch(e => {
            running = null;
            offline = e.name === "org.arbor.Arbor1.Error.Offline";
            showError(e.message);
            render();
        });
}

const RESET_TEXT = {
    etc: "The configuration in /etc goes back to what the image ships.",
    var: "The configuration in /etc and all data in /var start afresh, as on a new machine.",
    all: "The configuration and the data start afresh, layered packages go; home folders are kept.",
};

function resetLevel() {
    return document.querySelector("input[name=reset-level]:checked").value;
}

function askReset() {
    $("reset-text").replaceChildren(
        text("p", RESET_TEXT[resetLevel()]),
        text("p", "It takes effect at the next boot. The current state stays as the rollback until cleanup: Roll back brings it all back."));
    $("reset-dialog").hidden = false;
}

function onTransactionSignal(path, iface, signal, args) {
    if (!running || path !== running.path)
        return;
    if (signal === "PercentProgress") {
        running.text = args[0];
        running.percent = Math.max(running.percent, args[1]);
    } else if (signal === "TaskBegin") {
        running.task = args[0];
    } else if (signal === "DownloadProgress") {
        running.download = { done: args[0], total: args[1], rate: args[4] };
    } else if (signal === "Finished") {
        const [ok, message] = args;
        client.call(path, "org.freedesktop.DBus.Properties", "Get", [TRANSACTION, "ErrorName"])
            .then(([name]) => {
                offline = !ok && unwrap(name) === "org.arbor.Arbor1.Error.Offline";
            })
            .catch(() => {})
            .finally(() => {
                if (ok && running && running.method === "Check")
                    offline = false;
                running = null;
                showError(ok ? null : message);
                refresh();
            });
        return;
    }
    render();
}

function savePolicy(ev) {
    ev.preventDefault();
    const changes = {};
    for (const input of $("policy").querySelectorAll("input")) {
        changes[input.name] = input.type === "checkbox"
            ? { t: "b", v: input.checked }
            : { t: "s", v: input.value };
    }
    document.activeElement.blur();
    client.call(ROOT, SYSROOT, "SetAutomaticUpdatePolicy", [changes], { type: "a{sv}" })
        .then(() => { showError(null); refresh() })
        .catch(e => showError(e.message));
}

function init() {
    client = cockpit.dbus(NAME, { bus: "system" });
    client.subscribe({ path: ROOT, interface: "org.freedesktop.DBus.Properties", member: "PropertiesChanged" },
        () => refresh());
    client.subscribe({ path_namespace: ROOT + "/Transaction", interface: TRANSACTION }, onTransactionSignal);
    $("check").addEventListener("click", () => start("Check", {}));
    $("download").addEventListener("click", () => start("Upgrade", { "download-only": true }));
    $("install").addEventListener("click", () => start("Upgrade", {}));
    $("rollback").addEventListener("click", () => start("Rollback", {}));
    $("reboot").addEventListener("click", () => {
        cockpit.spawn(["systemctl", "reboot"], { superuser: "require", err: "message" })
            .catch(e => showError(e.message));
    });
    $("policy").addEventListener("submit", savePolicy);
    $("reset").addEventListener("click", askReset);
    $("reset-cancel").addEventListener("click", () => { $("reset-dialog").hidden = true });
    $("reset-confirm").addEventListener("click", () => {
        $("reset-dialog").hidden = true;
        start("Reset", {}, [resetLevel()], "s");
    });
    refresh();
}

document.addEventListener("DOMContentLoaded", init);
