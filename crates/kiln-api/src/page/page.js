"use strict";
// The download page's behaviour over a form the server rendered complete
// (it works without this script: it submits to /api/compat). Here: search,
// version choosers, the URL kept in step with every choice, "ready" or
// "will be built" before building, live progress over SSE, and the result.
(() => {
  const $ = (id) => document.getElementById(id);
  const data = JSON.parse($("kiln-data").textContent);
  const recipe = data.recipe;
  const form = $("form");
  const state = { seq: 0, timer: null, resolved: null, source: null, ticker: null, key: null };

  const el = (tag, props, ...children) => {
    const e = Object.assign(document.createElement(tag), props || {});
    e.append(...children);
    return e;
  };
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
  const seconds = (s) => (s < 90 ? `${Math.round(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
  const bytes = (n) => (n < 1024 ? plural(n, "byte", "bytes") : n < 1048576 ? `${(n / 1024).toFixed(0)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);
  const shellQuote = (s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

  // ---- Choices ----------------------------------------------------------------
  const rows = () => [...document.querySelectorAll("#catalogue .plugin")];
  const platform = () => (form.querySelector("input[name=platform]:checked") || {}).value || "";
  const version = () => $("version").value;
  function selected() {
    return rows().filter((li) => li.querySelector("input[type=checkbox]").checked).map((li) => {
      const v = li.querySelector(".pver select");
      const box = li.querySelector("input[type=checkbox]");
      const chosen = v ? v.value : box.dataset.version || "";
      return chosen ? { module: li.dataset.module, version: chosen } : { module: li.dataset.module };
    });
  }
  // The page's query, which is also what /api/resolve and /api/compat read.
  function query() {
    const q = new URLSearchParams();
    q.set("recipe", recipe.name);
    if (platform()) q.set("platform", platform());
    if (version()) q.set("version", version());
    for (const p of selected()) q.append("p", p.version ? `${p.module}@${p.version}` : p.module);
    return q;
  }
  function request() {
    const [os, arch, arm] = platform().split("/");
    const body = { recipe: recipe.name, os, arch, plugins: selected() };
    if (arm) body.arm = arm;
    if (version()) body.version = version();
    return body;
  }

  // ---- The URL ----------------------------------------------------------------
  function remember() {
    const url = `${location.pathname}?${query().toString().replace(/%2F/g, "/").replace(/%40/g, "@")}`;
    history.replaceState(null, "", url);
  }

  // ---- Versions -----------------------------------------------------------------
  async function versions(module) {
    const q = module ? `?module=${encodeURIComponent(module)}` : "";
    const res = await fetch(`/api/recipes/${recipe.name}/versions${q}`);
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    return body;
  }
  function fill(select, list, latest, wanted) {
    const opts = [el("option", { value: "", textContent: latest ? `latest (${latest})` : "latest" })];
    for (const v of list) opts.push(el("option", { value: v, textContent: v }));
    if (wanted && !list.includes(wanted)) opts.push(el("option", { value: wanted, textContent: wanted }));
    select.replaceChildren(...opts);
    select.value = wanted || "";
  }
  async function pluginVersions(li) {
    const box = li.querySelector("input[type=checkbox]");
    const holder = li.querySelector(".pver");
    if (!box.checked) { holder.replaceChildren(); return; }
    if (holder.querySelector("select")) return;
    const id = `${box.id}-version`;
    const select = el("select", { id });
    const wanted = box.dataset.version || "";
    fill(select, [], null, wanted);
    select.addEventListener("change", changed);
    holder.replaceChildren(el("label", { htmlFor: id, className: "sr", textContent: `Version of ${li.dataset.module}` }), select);
    try {
      const v = await versions(li.dataset.module);
      fill(select, v.versions, v.latest, select.value || wanted);
    } catch (e) {
      select.title = `versions unavailable: ${e.message}`;
    }
  }

  // ---- Catalogue: search, selection, typed plugins ----------------------------------
  function filter() {
    const words = ($("search") ? $("search").value : "").toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const li of rows()) {
      const hit = words.every((w) => li.dataset.search.includes(w));
      li.hidden = !hit;
      if (hit) shown++;
    }
    $("no-match").hidden = shown > 0 || rows().length === 0;
  }
  function counted() {
    const n = selected().length;
    $("picked").textContent = n ? `· ${plural(n, "selected", "selected")}` : "";
    for (const li of rows()) li.classList.toggle("on", li.querySelector("input[type=checkbox]").checked);
  }
  function addTyped() {
    const input = $("typed");
    const text = input.value.trim();
    if (!text) return;
    const [module, v] = text.split("@");
    const existing = rows().find((li) => li.dataset.module === module);
    if (existing) {
      existing.querySelector("input[type=checkbox]").checked = true;
    } else {
      const n = rows().length + 1;
      const box = el("input", { type: "checkbox", name: "p", value: module, id: `plugin-${n}`, checked: true });
      if (v) box.dataset.version = v;
      const li = el("li", { className: "plugin" }, box,
        el("div", { className: "about" },
          el("label", { htmlFor: box.id, className: "module", textContent: module }),
          el("p", { className: "meta" }, el("span", { textContent: "typed in" }))),
        el("div", { className: "pver" }));
      li.dataset.module = module;
      li.dataset.search = module.toLowerCase();
      $("catalogue").append(li);
      box.addEventListener("change", () => { pluginVersions(li); changed(); });
      pluginVersions(li);
    }
    input.value = "";
    changed();
  }

  // ---- Before building: is it ready? --------------------------------------------------
  function verdict(text, cls) {
    const v = $("verdict");
    v.className = `verdict ${cls || ""}`;
    v.replaceChildren(...(Array.isArray(text) ? text : [text]));
  }
  function changed() {
    counted();
    remember();
    clearTimeout(state.timer);
    state.timer = setTimeout(resolve, 150);
  }
  async function resolve() {
    const seq = ++state.seq;
    verdict("Checking…");
    let res, body;
    try {
      res = await fetch(`/api/resolve?${query()}`);
      body = await res.json();
    } catch (e) {
      if (seq === state.seq) verdict(`Cannot reach the farm: ${e.message}`, "bad");
      return;
    }
    if (seq !== state.seq) return;
    state.resolved = res.ok ? body : null;
    if (!res.ok) {
      verdict(body.error ? body.error.message : `error ${res.status}`, "bad");
      $("build").textContent = "Build";
      return;
    }
    const what = `${recipe.name} ${body.version} for ${body.platform}`;
    if (body.ready) {
      verdict([`Ready — instant download: ${what}. `], "ready");
      $("build").textContent = "Download";
    } else if (body.state === "queued" || body.state === "running") {
      verdict(`Being built right now: ${what}. Press the button to follow it.`);
      $("build").textContent = "Follow the build";
    } else if (body.state === "failed") {
      const why = ((body.build && body.build.error) || "").split("; last output:")[0].split("\n")[0];
      verdict(`This exact combination failed to build${why ? ` (${why})` : ""}. The button shows the error and the log.`, "bad");
      $("build").textContent = "Show the failure";
    } else {
      const typical = body.typical_secs != null ? ` — typically ${seconds(body.typical_secs)}` : "";
      verdict(`Will be built${typical}: ${what}.`);
      $("build").textContent = "Build";
    }
  }

  // ---- Building ------------------------------------------------------------------
  async function build(ev) {
    ev.preventDefault();
    const button = $("build");
    button.disabled = true;
    $("result").hidden = true;
    try {
      const res = await fetch("/api/builds", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(request()),
      });
      const body = await res.json();
      if (!res.ok) {
        verdict(body.error ? body.error.message : `error ${res.status}`, "bad");
        button.disabled = false;
        return;
      }
      follow(body);
    } catch (e) {
      verdict(`Cannot reach the farm: ${e.message}`, "bad");
      button.disabled = false;
    }
  }

  function follow(build) {
    if (state.source) state.source.close();
    clearInterval(state.ticker);
    if (["succeeded", "failed", "cancelled"].includes(build.state)) { finish(build); return; }
    state.key = build.key;
    state.step = null;
    const started = Date.now();
    $("build").disabled = true;
    verdict("Building — the progress is below. This page can be closed; the build goes on.");
    $("progress").hidden = false;
    $("log-box").open = true;
    $("log").textContent = "";
    $("progress-title").textContent = "Building";
    $("bar").removeAttribute("value");
    $("step").textContent = build.state === "running" ? "starting" : "waiting for a worker";
    $("link-state").textContent = "";
    const tick = () => { $("elapsed").textContent = `· ${seconds((Date.now() - started) / 1000)} elapsed`; };
    tick();
    state.ticker = setInterval(tick, 1000);
    // EventSource reconnects by itself and sends Last-Event-ID, so the
    // server resumes exactly after the last event this page saw.
    const es = new EventSource(build.links.events);
    state.source = es;
    es.addEventListener("open", () => { $("link-state").textContent = ""; });
    es.addEventListener("state", (e) => {
      const s = JSON.parse(e.data).state;
      if (s === "queued") $("step").textContent = "waiting for a worker";
      if (s === "running" && $("step").textContent === "waiting for a worker") $("step").textContent = "starting";
    });
    es.addEventListener("step_started", (e) => {
      const d = JSON.parse(e.data);
      $("step").textContent = `step ${d.index + 1} of ${d.total}: ${d.name}`;
      $("bar").max = d.total;
      $("bar").value = d.index + 0.5;
      state.step = `${d.index + 1} of ${d.total}: ${d.name}`;
    });
    es.addEventListener("step_finished", (e) => {
      const d = JSON.parse(e.data);
      $("bar").value = d.index + 1;
    });
    es.addEventListener("log", (e) => appendLog(e.data));
    es.addEventListener("result", (e) => { es.close(); finish(JSON.parse(e.data)); });
    es.addEventListener("error", () => {
      if (es.readyState === EventSource.CLOSED) {
        $("link-state").textContent = "The live stream closed; checking the build…";
        poll(build);
      } else {
        $("link-state").textContent = "Connection lost — reconnecting; the log resumes where it stopped.";
      }
    });
  }
  function appendLog(text) {
    const log = $("log");
    const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(text.endsWith("\n") ? text : `${text}\n`);
    if (log.textContent.length > 400000) log.textContent = log.textContent.slice(-300000);
    if (atEnd) log.scrollTop = log.scrollHeight;
  }
  async function poll(build) {
    for (;;) {
      try {
        const res = await fetch(`${build.links.self}?wait=30`);
        const b = await res.json();
        if (res.ok && ["succeeded", "failed", "cancelled"].includes(b.state)) { finish(b); return; }
      } catch (_) {
        await new Promise((r) => setTimeout(r, 3000));
      }
    }
  }

  // ---- Done ------------------------------------------------------------------------
  async function finish(build) {
    clearInterval(state.ticker);
    if (state.source) { state.source.close(); state.source = null; }
    $("build").disabled = false;
    const ok = build.state === "succeeded";
    // A failure keeps the live log in view, with where it stopped.
    $("progress").hidden = ok || $("log").textContent === "";
    if (!ok) {
      $("progress-title").textContent = "Log";
      $("step").textContent = state.step ? `stopped at step ${state.step}` : build.state;
    }
    const result = $("result");
    result.hidden = false;
    const plugins = build.plugins.map((p) => `${p.module}@${p.version}`).join(", ");
    $("what").textContent = `${build.recipe} ${build.version} for ${build.platform}` +
      (plugins ? ` with ${plugins}` : "") + ` · build ${build.key.slice(0, 12)}`;
    result.className = `panel ${ok ? "ok" : "failed"}`;
    $("success").hidden = !ok;
    $("failure").hidden = ok;
    if (!ok) {
      $("result-title").textContent = build.state === "cancelled" ? "The build was cancelled" : "The build failed";
      $("error").textContent = build.error || "no error was recorded";
      $("failure-log").href = build.links.log;
      result.focus();
      resolve();
      return;
    }
    $("result-title").textContent = "Ready";
    const resolved = await resolvedFor(build);
    const origin = location.origin;
    const file = resolved.file_name;
    const download = $("download");
    download.href = resolved.compat;
    download.setAttribute("download", file);
    download.textContent = `Download ${file}`;
    const bin = build.artifact && build.artifact.binary;
    $("size").textContent = bin && bin.size ? bytes(bin.size) : "";
    $("artifact").href = build.links.artifact;
    $("signature").href = build.links.signature;
    $("build-log").href = build.links.log;
    $("manifest").href = `${build.links.self}/build.json`;
    $("docker").hidden = !resolved.image;
    if (resolved.image) $("docker-cmd").textContent = `docker pull ${location.host}/${resolved.image}`;
    const abs = (u) => (u.startsWith("http") ? u : origin + u);
    $("curl-cmd").textContent = `curl -fo ${file} ${shellQuote(abs(resolved.compat))}`;
    const args = ["kiln", "--server", origin, "build", build.recipe, "--version", build.version, "--os", build.os, "--arch", build.arch];
    if (build.arm) args.push("--arm", build.arm);
    for (const p of build.plugins) args.push("--with", `${p.module}@${p.version}`);
    $("kiln-cmd").textContent = args.map(shellQuote).join(" ");
    const key = await signingKey();
    $("verify-cmd").textContent = [
      `curl -fo artifact.tar ${shellQuote(abs(build.links.artifact))}`,
      `curl -fo artifact.tar.minisig ${shellQuote(abs(build.links.signature))}`,
      `minisign -Vm artifact.tar -P ${key || "<the farm's public key>"}`,
    ].join("\n");
    const sums = [];
    if (build.artifact && build.artifact.artifact) sums.push(`artifact.tar sha256 ${build.artifact.artifact.sha256}`);
    if (bin && bin.sha256) sums.push(`${file} sha256 ${bin.sha256}`);
    $("sums").textContent = sums.join(" · ");
    result.focus();
    resolve();
  }
  // The file name, pinned compat URL and image of a finished build.
  async function resolvedFor(build) {
    const r = state.resolved;
    if (r && r.key === build.key) return r;
    const q = new URLSearchParams({ recipe: build.recipe, os: build.os, arch: build.arch, version: build.version });
    if (build.arm) q.set("arm", build.arm);
    for (const p of build.plugins) q.append("p", `${p.module}@${p.version}`);
    const res = await fetch(`/api/resolve?${q}`);
    return res.json();
  }
  async function signingKey() {
    try {
      const res = await fetch("/api/signing-key");
      if (!res.ok) return "";
      return (await res.text()).trim().split("\n").pop().trim();
    } catch (_) {
      return "";
    }
  }

  // ---- Platform: refine the server's guess where the browser tells more ----------------
  async function refinePlatform() {
    if (data.choices.platform_from_url || !navigator.userAgentData || !navigator.userAgentData.getHighEntropyValues) return;
    const ua = await navigator.userAgentData.getHighEntropyValues(["architecture", "bitness"]);
    const os = platform().split("/")[0];
    const arch = ua.architecture === "arm" ? (ua.bitness === "64" ? "arm64" : "arm/7") : ua.architecture === "x86" && ua.bitness === "64" ? "amd64" : "";
    const input = arch && form.querySelector(`input[name=platform][value="${os}/${arch}"]`);
    if (input && !input.checked && input.dataset.detected === undefined) {
      input.checked = true;
      changed();
    }
  }

  // ---- Wiring ------------------------------------------------------------------------
  async function start() {
    const go = new URLSearchParams(location.search).get("go") === "1";
    form.addEventListener("submit", build);
    form.addEventListener("change", (e) => {
      if (e.target.matches("#catalogue input[type=checkbox]")) pluginVersions(e.target.closest("li"));
      if (e.target.id !== "typed") changed();
    });
    if ($("search")) $("search").addEventListener("input", filter);
    if ($("typed")) {
      $("typed").name = "";
      $("add").hidden = false;
      $("add").addEventListener("click", addTyped);
      $("typed").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); addTyped(); } });
    }
    for (const b of document.querySelectorAll("button.copy")) {
      b.addEventListener("click", async () => {
        try { await navigator.clipboard.writeText($(b.dataset.copy).textContent); b.textContent = "Copied"; } catch (_) { b.textContent = "Select and copy"; }
        setTimeout(() => { b.textContent = "Copy"; }, 1500);
      });
    }
    for (const li of rows()) pluginVersions(li);
    counted();
    const v = $("version");
    if (v.dataset.proxied !== undefined) {
      try {
        const list = await versions(null);
        fill(v, list.versions, list.latest, data.choices.version);
      } catch (e) {
        verdict(`Versions unavailable: ${e.message}`, "bad");
      }
    }
    remember();
    await resolve();
    refinePlatform().catch(() => {});
    if (go) form.requestSubmit();
  }
  start();
})();
