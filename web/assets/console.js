// Keel console: live regions, API actions, schedule previews and output tails. No framework, no build.
'use strict';
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]');
  const headers = { 'Content-Type': 'application/json', 'Accept': 'application/json' };
  if (csrf) headers['X-CSRF-Token'] = csrf.content;

  function flash(text, tone) {
    const f = document.getElementById('flash');
    if (!f) return;
    f.textContent = text;
    f.className = 'flash ' + (tone || 'ok');
  }

  // ---- live regions: refetch the page when a topic it shows changes, swap [data-live] regions ----
  let inFlight = false, again = false;
  async function refresh() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    try {
      const r = await fetch(location.href, { headers: { 'Accept': 'text/html', 'X-Keel-Live': '1' } });
      if (r.ok) {
        const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
        doc.querySelectorAll('[data-live][id]').forEach(function (fresh) {
          const old = document.getElementById(fresh.id);
          // A region the person is typing in, or has edited, is left alone.
          const editing = old && (old.contains(document.activeElement) || old.querySelector('form[data-dirty]'));
          if (old && old.innerHTML !== fresh.innerHTML && !editing) {
            old.replaceWith(document.importNode(fresh, true));
          }
        });
      }
    } catch (e) { /* the next change tries again */ }
    inFlight = false;
    if (again) { again = false; refresh(); }
  }
  const shown = (document.body.dataset.topics || '').split(' ').filter(Boolean);
  if (shown.length && window.EventSource) {
    const es = new EventSource('/ui/events');
    window.addEventListener('pagehide', function () { es.close(); });
    // A change between this page's rendering and the stream's opening (or while it reconnected) told no
    // one: look once whenever the stream opens.
    es.addEventListener('open', function () { refresh(); });
    es.addEventListener('change', function (e) {
      if (e.data.split(' ').some(function (t) { return shown.includes(t); })) refresh();
    });
  }

  // ---- API calls ----
  async function call(method, url, body) {
    const r = await fetch(url, { method: method, headers: headers, body: body || undefined, credentials: 'same-origin' });
    let data = null;
    const text = await r.text();
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text }; }
    if (r.status === 401) {
      // The session has ended: sign in again, and come back here.
      location.href = '/login?next=' + encodeURIComponent(location.pathname + location.search);
    }
    return { ok: r.ok, status: r.status, data: data };
  }

  function showErrors(form, res) {
    form.querySelectorAll('.field-error').forEach(function (e) { e.textContent = ''; });
    form.querySelectorAll('[aria-invalid]').forEach(function (e) { e.removeAttribute('aria-invalid'); });
    const data = res.data || {};
    const root = form.querySelector('.field-error[data-path="/"]');
    let placed = false;
    (data.details || []).forEach(function (d) {
      const path = d.path || '/';
      let target = null;
      form.querySelectorAll('.field-error[data-path]').forEach(function (e) {
        const p = e.dataset.path;
        if (p !== '/' && (path === p || path.startsWith(p + '/') || path.startsWith(p + '('))) target = target || e;
      });
      if (target) {
        target.textContent = (d.errors || []).join('; ');
        const input = target.parentElement.querySelector('input, textarea, select');
        if (input) input.setAttribute('aria-invalid', 'true');
        placed = true;
      } else if (root) {
        root.textContent += path + ': ' + (d.errors || []).join('; ') + ' ';
      }
    });
    const msg = (data.message || ('HTTP ' + res.status));
    if (root && !placed) root.textContent = msg + (root.textContent ? ' — ' + root.textContent : '');
    flash('The API refused: ' + msg + ' (HTTP ' + res.status + ')', 'bad');
  }

  function then(form, data, sent) {
    const to = form.dataset.then;
    if (!to) { flash('Done.', 'ok'); refresh(); return; }
    const id = (data && data.id) || (sent && sent.id) || '';
    location.href = to.replace('{id}', encodeURI(id));
  }

  function num(form, name) {
    const v = form.elements[name] && form.elements[name].value;
    return v === '' || v === undefined ? undefined : Number(v);
  }
  function val(form, name) {
    const v = form.elements[name] && form.elements[name].value.trim();
    return v ? v : undefined;
  }

  function appBody(form) {
    const app = { id: val(form, 'id'), instances: num(form, 'instances'), cpus: num(form, 'cpus'), mem: num(form, 'mem') };
    const cmd = val(form, 'cmd');
    if (cmd) app.cmd = cmd;
    const image = val(form, 'image');
    if (image) app.container = { type: 'DOCKER', docker: { image: image } };
    return app;
  }

  // An edit starts from the job as the API gave it, so that what the form does not show is kept.
  function jobBody(form) {
    const job = form.dataset.current ? JSON.parse(form.dataset.current) : {};
    job.id = val(form, 'id');
    job.run = Object.assign({ disk: 0 }, job.run || {}, { cmd: val(form, 'cmd'), cpus: num(form, 'cpus'), mem: num(form, 'mem') });
    const d = val(form, 'description');
    if (d) job.description = d; else delete job.description;
    const cron = val(form, 'cron');
    const current = form.dataset.schedule ? JSON.parse(form.dataset.schedule) : { id: 'default', enabled: true };
    job.schedules = cron ? [Object.assign(current, { cron: cron, timezone: val(form, 'timezone') || 'UTC' })] : [];
    return job;
  }

  document.addEventListener('input', function (e) {
    if (e.target.form) e.target.form.dataset.dirty = '1';
  });

  document.addEventListener('submit', async function (e) {
    const form = e.target;
    if (!form.dataset || !form.dataset.call) return;
    e.preventDefault();
    let body;
    try {
      if (form.dataset.number) body = { [form.dataset.number]: num(form, form.dataset.number) };
      else if (form.dataset.json) body = JSON.parse(form.elements[form.dataset.json].value);
      else if (form.dataset.fields === 'app') body = appBody(form);
      else if (form.dataset.fields === 'job') body = jobBody(form);
    } catch (err) {
      showErrors(form, { status: 400, data: { message: 'not valid JSON: ' + err.message } });
      return;
    }
    const button = form.querySelector('[type=submit]');
    if (button) button.disabled = true;
    const res = await call(form.dataset.call, form.dataset.url, JSON.stringify(body));
    if (button) button.disabled = false;
    if (res.ok) {
      delete form.dataset.dirty;
      form.querySelectorAll('.field-error').forEach(function (x) { x.textContent = ''; });
      then(form, res.data, body);
    } else {
      showErrors(form, res);
    }
  });

  document.addEventListener('click', async function (e) {
    const b = e.target.closest && e.target.closest('button[data-call]');
    if (!b) return;
    if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
    b.disabled = true;
    const res = await call(b.dataset.call, b.dataset.url, b.dataset.body || undefined);
    b.disabled = false;
    if (!res.ok) {
      flash('The API refused: ' + ((res.data && res.data.message) || '') + ' (HTTP ' + res.status + ')', 'bad');
      return;
    }
    const url = b.dataset.url;
    if (b.dataset.call === 'DELETE' && /\/v2\/apps\//.test(url)) { location.href = '/ui/apps'; return; }
    if (b.dataset.call === 'DELETE' && /\/v1\/jobs\/[^/]+(\?|$)/.test(url)) { location.href = '/ui/jobs'; return; }
    flash(b.textContent.trim() + ': done.', 'ok');
    refresh();
  });

  // ---- schedule preview ----
  const preview = document.getElementById('preview');
  if (preview) {
    let timer = null;
    const form = preview.closest('form');
    const update = async function () {
      const cron = form.elements.cron.value.trim();
      if (!cron) { preview.innerHTML = '<small>No schedule: the job runs when started.</small>'; return; }
      const tz = form.elements.timezone.value.trim() || 'UTC';
      const q = 'cron=' + encodeURIComponent(cron) + '&timezone=' + encodeURIComponent(tz) + '&count=5';
      const res = await call('GET', '/ui/api/jobs/keel/v1/schedule/preview?' + q);
      preview.textContent = '';
      if (!res.ok) {
        const p = document.createElement('p');
        p.className = 'error';
        p.textContent = (res.data && res.data.message) || ('HTTP ' + res.status);
        preview.appendChild(p);
        return;
      }
      const h = document.createElement('p');
      h.textContent = 'Next fire times in ' + res.data.timezone + ':';
      const ol = document.createElement('ol');
      ol.className = 'fire-times';
      (res.data.next || []).forEach(function (t) {
        const li = document.createElement('li');
        li.textContent = t.local;
        ol.appendChild(li);
      });
      preview.appendChild(h);
      preview.appendChild(ol);
    };
    form.querySelectorAll('[data-preview]').forEach(function (i) {
      i.addEventListener('input', function () { clearTimeout(timer); timer = setTimeout(update, 250); });
    });
    if (form.elements.cron.value.trim()) update();
  }

  // ---- output tails: one stream for stdout and stderr ----
  const tail = document.getElementById('tail');
  if (tail && window.EventSource) {
    const es = new EventSource(tail.dataset.tail);
    es.addEventListener('output', function (e) {
      JSON.parse(e.data).forEach(function (part) {
        const pre = document.getElementById(part.file);
        if (!pre) return;
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.appendChild(document.createTextNode(part.data));
        if (pre.textContent.length > 400000) pre.textContent = pre.textContent.slice(-200000);
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      });
    });
    const stop = function (note) {
      return function (e) {
        es.close();
        document.querySelectorAll('section.output pre').forEach(function (pre) { pre.dataset.state = note + (e.data ? ': ' + e.data : ''); });
      };
    };
    es.addEventListener('end', stop('ended'));
    es.addEventListener('failure', stop('failed'));
    window.addEventListener('pagehide', function () { es.close(); });
  }
})();
