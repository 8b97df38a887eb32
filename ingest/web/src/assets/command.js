// greenplate command center: keeps the incident list, the map markers, readers' health and
// the ingest rates live from the server-sent event stream /command/events. The stream
// resumes after the last alert seq (the page's, then the browser's Last-Event-ID), so a
// reload or a dropped connection misses nothing.
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

  function upsertRow(a) {
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
      act.appendChild(actionForm(a.incident_id, 'ack', '受理 / Ack', false));
      act.appendChild(actionForm(a.incident_id, 'resolve', '结案 / Resolve', true));
      row.appendChild(act);
    }
    row.querySelector('.time').textContent = a.seen;
    row.querySelector('.reader').textContent = a.reader_id;
    row.dataset.seq = a.seq;
    row.className = (a.priority > 1 ? 'urgent ' : '') + 'fresh';
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
