// dropdeploy's status page, made better with JavaScript: build lines as they come (server-sent
// events from /events), and the page read again when something else changes. Text only ever
// goes into the page as text (textContent), never as markup.
'use strict';
(function () {
  var MAX_LINES = 500;
  var reloading = false;
  var again = false;

  // A form being filled in (a token typed) is not replaced under the person's fingers.
  function busy() {
    var fields = document.querySelectorAll('input[type=password]');
    for (var i = 0; i < fields.length; i++) {
      if (fields[i].value !== '' || fields[i] === document.activeElement) return true;
    }
    return false;
  }

  // Reads the page again and puts its <main> in place of this one.
  function reload() {
    if (reloading) { again = true; return; }
    if (busy()) return;
    reloading = true;
    fetch('/', { cache: 'no-store' }).then(function (r) {
      return r.ok ? r.text() : Promise.reject(r.status);
    }).then(function (text) {
      var doc = new DOMParser().parseFromString(text, 'text/html');
      var fresh = doc.getElementById('main');
      var old = document.getElementById('main');
      if (fresh && old && !busy()) {
        keepLines(old, fresh);
        old.replaceWith(document.adoptNode(fresh));
        toEnd(fresh);
        document.title = doc.title;
        var summary = doc.querySelector('header');
        var header = document.querySelector('header');
        if (summary && header) header.replaceWith(document.adoptNode(summary));
      }
    }).catch(function () {}).then(function () {
      reloading = false;
      if (again) { again = false; reload(); }
    });
  }

  // Lines that came live and are newer than the page read keep their arrival time.
  function keepLines(old, fresh) {
    old.querySelectorAll('pre.log').forEach(function (pre) {
      var other = fresh.querySelector('pre.log[data-job="' + CSS.escape(pre.dataset.job) + '"]');
      if (other && Number(pre.dataset.count) >= Number(other.dataset.count)) {
        other.replaceWith(pre);
      }
    });
  }

  function logOf(job) {
    var logs = document.querySelectorAll('pre.log');
    for (var i = 0; i < logs.length; i++) {
      if (logs[i].dataset.job === job) return logs[i];
    }
    return null;
  }

  function lines(message) {
    var log = logOf(message.job);
    if (!log) { reload(); return; }
    var have = Number(log.dataset.count) || 0;
    var at = Date.now();
    var stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    message.lines.forEach(function (line, i) {
      if (message.first + i < have) return;
      var span = document.createElement('span');
      span.textContent = line;
      span.dataset.at = String(at);
      log.appendChild(span);
      log.appendChild(document.createTextNode('\n'));
    });
    log.dataset.count = String(Math.max(have, message.first + message.lines.length));
    while (log.childNodes.length > 2 * MAX_LINES) log.removeChild(log.firstChild);
    if (stick) log.scrollTop = log.scrollHeight;
  }

  // Build output opens at its end, the newest lines.
  function toEnd(root) {
    root.querySelectorAll('pre.log').forEach(function (log) { log.scrollTop = log.scrollHeight; });
  }

  var timer = null;
  function soon() {
    if (timer) return;
    timer = setTimeout(function () { timer = null; reload(); }, 150);
  }

  function connect() {
    var source = new EventSource('/events');
    var seen = false;
    source.addEventListener('hello', function () {
      document.body.dataset.live = 'on';
      // Connected again: what happened meanwhile was not streamed.
      if (seen) soon();
      seen = true;
    });
    source.addEventListener('line', function (e) { lines(JSON.parse(e.data)); });
    source.addEventListener('state', soon);
    source.onerror = function () { document.body.dataset.live = 'off'; };
  }

  toEnd(document);
  if (window.EventSource && window.fetch) {
    connect();
    // Times, waits and the budget move on their own.
    setInterval(reload, 10000);
  } else {
    setTimeout(function () { location.reload(); }, 5000);
  }
})();
