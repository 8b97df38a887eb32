// greenplate command center: keeps the incident list, the map markers, readers' health and
// the ingest rates live from the server-sent event stream /command/events. The stream
// resumes after the last alert seq (the page's, then the browser's Last-Event-ID), so a
// reload or a dropped connection misses nothing. Each live alert plays the alarm of its
// priority; escalations and rejected hits also go to their panel.
(function () {
  'use strict';
  var main = document.getElementById('command');
  var svg = document.getElementById('map');
  if (!main || !svg) return;
  var csrf = main.dataset.csrf;
  var NS = 'http://www.w3.org/2000/svg';
  var proj = {
    minLon: parseFloat(svg.dataset.minLon), maxLat: parseFloat(svg.dataset.maxLat),
    kx: parseFloat(svg.dataset.kx), ky: parseFloat(svg.dataset.ky)
  };
  var live = document.getElementById('live');
  var rows = document.getElementById('incident-rows');
  var markers = document.getElementById('markers');

  function px(lon) { return ((lon - proj.minLon) * proj.kx).toFixed(1); }
  function py(lat) { return ((proj.maxLat - lat) * proj.ky).toFixed(1); }
  function sel(attr, value) { return '[' + attr + '="' + CSS.escape(value) + '"]'; }
  function node(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function hidden(name, value) {
    var i = document.createElement('input');
    i.type = 'hidden'; i.name = name; i.value = value;
    return i;
  }
  function actionForm(id, action, label, select) {
    var f = document.createElement('form');
    f.method = 'post'; f.action = '/command/incident';
    f.appendChild(hidden('csrf', csrf));
    f.appendChild(hidden('incident_id', id));
    f.appendChild(hidden('action', action));
    if (select) {
      var s = document.createElement('select');
      s.name = 'outcome'; s.setAttribute('aria-label', '结果 / Outcome');
      [['recovered', '找回 / recovered'], ['false_alarm', '误报 / false alarm'],
       ['lost_track', '失去踪迹 / lost track']].forEach(function (o) {
        var opt = node('option', o[1]); opt.value = o[0]; s.appendChild(opt);
      });
      f.appendChild(s);
    }
    var b = node('button', label); b.type = 'submit';
    f.appendChild(b);
    return f;
  }

  // The alarm of a priority (1 normal, 2 urgent, 3 critical). A browser may refuse sound
  // until the officer has touched the page: then a button says so, and turns it on.
  var soundOff = document.getElementById('sound-off');
  function alarm(priority) {
    var p = Math.min(Math.max(priority || 1, 1), 3);
    var audio = document.getElementById('alarm-' + p);
    if (!audio) return;
    audio.currentTime = 0;
    var played = audio.play();
    var done = function () {
      audio.dataset.played = String(parseInt(audio.dataset.played || '0', 10) + 1);
    };
    if (played && played.then) {
      played.then(done, function () { if (soundOff) soundOff.hidden = false; });
    } else {
      done();
    }
  }
  var soundOn = document.getElementById('sound-on');
  if (soundOn) {
    soundOn.addEventListener('click', function () {
      var a = document.getElementById('alarm-1');
      if (a) { a.muted = true; a.play().then(function () { a.pause(); a.muted = false; }, function () {}); }
      soundOff.hidden = true;
    });
  }

  var notable = document.getElementById('notable-rows');
  function addNotable(a) {
    if (!notable || notable.querySelector('tr' + sel('data-seq', String(a.seq)))) return;
    var row = document.createElement('tr');
    row.dataset.seq = a.seq;
    row.className = a.escalation > 0 ? 'escalated fresh' : 'rejected fresh';
    row.appendChild(node('td', a.seen, 'time'));
    var kind = node('td');
    if (a.escalation > 0) {
      kind.appendChild(node('span', '升级 / escalated', 'badge escalated'));
      kind.appendChild(document.createTextNode(' '));
    }
    kind.appendChild(node('span', a.kind_zh, 'zh'));
    kind.appendChild(document.createElement('br'));
    kind.appendChild(node('span', a.kind_en, 'en'));
    row.appendChild(kind);
    var plate = node('td', '', 'plate');
    var link = node('a', a.plate || a.incident_id);
    link.href = '/command/incidents/' + encodeURIComponent(a.incident_id);
    plate.appendChild(link);
    row.appendChild(plate);
    row.appendChild(node('td', a.reader_id, 'reader'));
    row.appendChild(node('td', a.reason || (a.escalation > 0 ? '无人及时受理 / nobody acknowledged it in time' : ''), 'why'));
    notable.insertBefore(row, notable.firstChild);
  }

  function upsertRow(a) {
    // A bike reported and not seen yet leaves the waiting list with its first alert.
    var waiting = document.getElementById('waiting');
    var wrow = waiting && waiting.querySelector('tr' + sel('data-incident', a.incident_id));
    if (wrow) {
      wrow.parentNode.removeChild(wrow);
      var wcount = document.getElementById('waiting-count');
      if (wcount) wcount.textContent = waiting.querySelectorAll('tbody tr').length;
    }
    var row = rows.querySelector('tr' + sel('data-incident', a.incident_id));
    if (row && parseInt(row.dataset.seq, 10) >= a.seq) return;
    if (!row) {
      row = document.createElement('tr');
      row.dataset.incident = a.incident_id;
      row.appendChild(node('td', '', 'time'));
      var kind = node('td');
      kind.appendChild(node('span', a.kind_zh, 'zh'));
      kind.appendChild(document.createElement('br'));
      kind.appendChild(node('span', a.kind_en, 'en'));
      row.appendChild(kind);
      var plate = node('td', '', 'plate');
      if (a.plate) {
        var link = node('a', a.plate);
        link.href = '/command?track=' + encodeURIComponent(a.plate);
        plate.appendChild(link);
      } else {
        plate.textContent = '-';
      }
      row.appendChild(plate);
      row.appendChild(node('td', '', 'reader'));
      row.appendChild(node('td', '新 / open', 'state'));
      var act = node('td', '', 'act');
      var details = node('a', '详情 / Details', 'details');
      details.href = '/command/incidents/' + encodeURIComponent(a.incident_id);
      act.appendChild(details);
      act.appendChild(actionForm(a.incident_id, 'ack', '受理 / Ack', false));
      act.appendChild(actionForm(a.incident_id, 'resolve', '结案 / Resolve', true));
      row.appendChild(act);
    }
    row.querySelector('.time').textContent = a.seen;
    row.querySelector('.reader').textContent = a.reader_id;
    row.dataset.seq = a.seq;
    // The incident's highest priority so far (a later note on it, such as a rejected hit,
    // does not make it look less urgent).
    var p = Math.max(a.priority || 1, parseInt(row.dataset.priority || '1', 10));
    row.dataset.priority = p;
    row.className = 'priority-' + p + (p > 1 ? ' urgent' : '') + ' fresh';
    rows.insertBefore(row, rows.firstChild);
    var count = document.getElementById('incident-count');
    if (count) count.textContent = rows.children.length;
    var none = document.getElementById('no-incidents');
    if (none) none.remove();
  }

  function upsertMarker(a) {
    var g = markers.querySelector('g' + sel('data-incident', a.incident_id));
    if (!g) {
      g = document.createElementNS(NS, 'g');
      g.setAttribute('data-incident', a.incident_id);
      g.appendChild(document.createElementNS(NS, 'circle')).setAttribute('r', '8');
      var t = document.createElementNS(NS, 'text');
      t.setAttribute('x', '11'); t.setAttribute('y', '4');
      t.textContent = a.plate;
      g.appendChild(t);
      markers.appendChild(g);
    }
    g.setAttribute('class', 'marker fresh kind-' + a.kind);
    g.setAttribute('transform', 'translate(' + px(a.lon) + ',' + py(a.lat) + ')');
  }

  // What other users (or this one, elsewhere) did: resolved incidents leave the list and
  // the map; acknowledged ones lose their Ack button.
  function incidentChanges(changes) {
    changes.forEach(function (ch) {
      var row = rows.querySelector('tr' + sel('data-incident', ch.id));
      if (!row) return;
      if (ch.state === 'resolved') {
        row.remove();
        var g = markers.querySelector('g' + sel('data-incident', ch.id));
        if (g) g.remove();
        var count = document.getElementById('incident-count');
        if (count) count.textContent = rows.children.length;
      } else if (ch.state === 'acknowledged') {
        row.querySelector('.state').textContent = '已受理 / acknowledged';
        var ack = row.querySelector('input[name=action][value=ack]');
        if (ack) ack.form.remove();
      }
    });
  }

  function status(s) {
    incidentChanges(s.incidents || []);
    var r = s.rates || {};
    ['reads', 'batches', 'sightings', 'rejected'].forEach(function (k) {
      var e = document.getElementById('rate-' + k);
      if (e) e.textContent = (r[k] || 0) + ' /s';
    });
    (s.readers || []).forEach(function (rd) {
      var cls = rd.online ? 'online' : 'offline';
      var row = document.querySelector('#readers tr' + sel('data-reader', rd.id));
      if (row) {
        row.className = cls;
        row.querySelector('.state').textContent = rd.online ? '在线 / online' : '离线 / offline';
        row.querySelector('.seen').textContent = rd.last_seen;
      }
      var dot = svg.querySelector('circle' + sel('data-reader', rd.id));
      if (dot) dot.setAttribute('class', 'reader ' + cls);
    });
  }

  var source = new EventSource('/command/events?after=' + encodeURIComponent(main.dataset.after || '0'));
  source.addEventListener('open', function () {
    live.textContent = '实时 / live';
    live.className = 'live on';
  });
  source.addEventListener('alert', function (e) {
    var a = JSON.parse(e.data);
    alarm(a.priority);
    if (a.escalation > 0 || a.kind === 11) addNotable(a);
    upsertRow(a);
    upsertMarker(a);
  });
  source.addEventListener('status', function (e) { status(JSON.parse(e.data)); });
  source.addEventListener('error', function () {
    if (source.readyState === EventSource.CLOSED) {
      live.textContent = '已断开，请刷新并重新登录 / Disconnected: reload and sign in';
      live.className = 'live off';
    } else {
      live.textContent = '重新连接… / reconnecting…';
      live.className = 'live wait';
    }
  });
})();
