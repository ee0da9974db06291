// montra-hooks inspector: relative times, copy buttons, the live event list and the event page's refresh.
// Plain JavaScript, same-origin requests only. Text from events goes into the page with textContent, never as HTML.
(function () {
  "use strict";

  var POLL_MS = 1500;

  function ago(iso) {
    var seconds = (Date.parse(iso) - Date.now()) / 1000;
    var future = seconds > 0;
    seconds = Math.abs(seconds);
    var text;
    if (seconds < 5) return future ? "now" : "just now";
    if (seconds < 60) text = Math.round(seconds) + " s";
    else if (seconds < 3600) text = Math.round(seconds / 60) + " min";
    else if (seconds < 86400) text = Math.round(seconds / 3600) + " h";
    else text = Math.round(seconds / 86400) + " d";
    return future ? "in " + text : text + " ago";
  }

  function refreshTimes() {
    var nodes = document.querySelectorAll("[data-ago]");
    for (var i = 0; i < nodes.length; i++) nodes[i].textContent = ago(nodes[i].getAttribute("data-ago"));
  }

  function setupCopy() {
    document.addEventListener("click", function (e) {
      var button = e.target.closest ? e.target.closest("button[data-copy]") : null;
      if (!button) return;
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source) return;
      var text = source.textContent;
      var done = function () {
        var label = button.textContent;
        button.textContent = "Copied";
        setTimeout(function () { button.textContent = label; }, 1200);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { select(source); });
      } else {
        select(source);
      }
    });
  }

  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function getJSON(url, ok, fail) {
    var request = new XMLHttpRequest();
    request.open("GET", url);
    request.setRequestHeader("Accept", "application/json");
    request.onload = function () {
      if (request.status === 200) ok(JSON.parse(request.responseText));
      else fail(request.status);
    };
    request.onerror = function () { fail(0); };
    request.send();
  }

  function every(ms, tick) {
    var run = function () {
      if (document.hidden) { setTimeout(run, ms); return; }
      tick(function () { setTimeout(run, ms); });
    };
    setTimeout(run, ms);
  }

  // The list: ask for the window of events shown (and anything newer); add new rows, update statuses.
  function setupLiveList() {
    var table = document.getElementById("events");
    if (!table || !table.getAttribute("data-api")) return;
    var tbody = table.tBodies[0];
    var api = table.getAttribute("data-api");
    var after = parseInt(table.getAttribute("data-after"), 10) || 0;
    var limit = parseInt(table.getAttribute("data-limit"), 10) || 100;
    var live = document.getElementById("live");
    var empty = document.getElementById("empty");
    every(POLL_MS, function (next) {
      var url = api + (api.indexOf("?") === api.length - 1 ? "" : "&") + "after=" + after + "&limit=" + limit;
      getJSON(url, function (data) {
        if (live) { live.classList.remove("offline"); live.textContent = "live"; }
        merge(tbody, data.events, limit);
        if (empty) empty.hidden = tbody.rows.length > 0;
        next();
      }, function (status) {
        if (live) { live.classList.add("offline"); live.textContent = status === 401 ? "logged out" : "offline, retrying"; }
        next();
      });
    });
  }

  function merge(tbody, events, limit) {
    var rows = {};
    for (var i = 0; i < tbody.rows.length; i++) rows[tbody.rows[i].getAttribute("data-seq")] = tbody.rows[i];
    // events come newest first; walk oldest first so each new row goes above the ones already placed.
    for (var j = events.length - 1; j >= 0; j--) {
      var e = events[j];
      var row = rows[String(e.seq)];
      if (row) {
        var badge = row.querySelector(".badge");
        if (badge.textContent !== e.status) { badge.textContent = e.status; badge.className = "badge status-" + e.status; }
        continue;
      }
      row = buildRow(e);
      var before = null;
      for (var k = 0; k < tbody.rows.length; k++) {
        if (parseInt(tbody.rows[k].getAttribute("data-seq"), 10) < e.seq) { before = tbody.rows[k]; break; }
      }
      tbody.insertBefore(row, before);
    }
    while (tbody.rows.length > limit) tbody.deleteRow(tbody.rows.length - 1);
    refreshTimes();
  }

  function cell(row, className, text) {
    var td = row.insertCell(-1);
    if (className) td.className = className;
    if (text !== undefined) td.textContent = text;
    return td;
  }

  function buildRow(e) {
    // The same cells as list.html renders: one line, long values cut, the whole value in `title`.
    var row = document.createElement("tr");
    row.className = "new";
    row.setAttribute("data-seq", String(e.seq));
    cell(row, "num mono", String(e.seq));
    var when = cell(row, "when");
    var time = document.createElement("time");
    time.setAttribute("datetime", e.received_at);
    time.title = e.received_at;
    time.textContent = e.received;
    var since = document.createElement("span");
    since.className = "ago muted";
    since.setAttribute("data-ago", e.received_at);
    when.appendChild(time);
    when.appendChild(document.createTextNode(" "));
    when.appendChild(since);
    cell(row, "type", e.type).title = e.type;
    var box = document.createElement("div");
    box.className = "id-cell";
    var link = document.createElement("a");
    link.href = e.url;
    link.id = "id-" + e.seq;
    link.title = e.id + (e.replay_of ? " (replay of " + e.replay_of + ")" : "");
    if (e.id_tail) {
      var head = document.createElement("span");
      head.className = "id-head";
      head.textContent = e.id_head;
      var tail = document.createElement("span");
      tail.className = "id-tail";
      tail.textContent = e.id_tail;
      link.appendChild(head);
      link.appendChild(tail);
    } else {
      link.textContent = e.id;
    }
    var copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.setAttribute("data-copy", link.id);
    copy.title = "Copy the id";
    copy.textContent = "Copy";
    box.appendChild(link);
    box.appendChild(copy);
    cell(row, "mono id").appendChild(box);
    var badge = document.createElement("span");
    badge.className = "badge status-" + e.status;
    badge.textContent = e.status;
    cell(row, "").appendChild(badge);
    return row;
  }

  // The event page: reload when its runs change (a retry ran, a re-run finished).
  function setupEventRefresh() {
    var state = document.body.getAttribute("data-state");
    var url = document.body.getAttribute("data-state-url");
    if (!state || !url) return;
    every(POLL_MS, function (next) {
      getJSON(url, function (data) {
        // Not while the edit-and-replay form holds unsent changes: a reload would lose them.
        var edit = document.getElementById("edit-body");
        var editing = edit && edit.value !== edit.defaultValue;
        if (data.state !== state && !editing) window.location.replace(window.location.pathname);
        else next();
      }, function () { next(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    refreshTimes();
    setInterval(refreshTimes, 10000);
    setupCopy();
    setupLiveList();
    setupEventRefresh();
  });
})();
