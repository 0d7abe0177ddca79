// The RLM trajectory viewer. No framework, no build step, nothing from the network.
// Every value from a log is put on the page with textContent (never innerHTML).
"use strict";

const PAGE_SIZE = 50;
const state = {
  runs: [], runId: null, node: "", run: null, page: 0,
  details: new Map(), // "runId|node|i" -> iteration document
  open: new Set(),    // iteration indices expanded on this page
};

// -- small helpers -------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "cls") node.className = value;
    else if (key === "height") node.style.height = value; // CSSOM: allowed by the page's CSP
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, params) {
  const query = new URLSearchParams(params || {}).toString();
  const response = await fetch(path + (query ? "?" + query : ""));
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function secs(value) { return value === null || value === undefined ? "" : value.toFixed(2) + "s"; }
function num(value) { return (value || 0).toLocaleString("en-US"); }
function cost(value) { return value === null || value === undefined ? "–" : "$" + value.toFixed(6); }

// -- history: every run, child run and iteration opened is a history entry -------------
// The hash is the deep link: #run=ID[&node=ADDRESS][&it=N] (N is 1-based).

function hashFor(runId, node, iteration) {
  const params = new URLSearchParams({ run: runId || "" });
  if (node) params.set("node", node);
  if (iteration !== null && iteration !== undefined) params.set("it", String(iteration + 1));
  return "#" + params.toString();
}

function setHash(iteration, push) {
  const hash = hashFor(state.runId, state.node, iteration);
  if (hash === location.hash) return;
  if (push) history.pushState(null, "", hash);
  else history.replaceState(null, "", hash);
}

function fromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const it = parseInt(params.get("it") || "", 10);
  return { run: params.get("run"), node: params.get("node") || "", it: Number.isFinite(it) ? it - 1 : null };
}

async function followHash() {
  const wanted = fromHash();
  if (!wanted.run || !state.runs.some((r) => r.id === wanted.run)) return false;
  if (wanted.run !== state.runId || wanted.node !== state.node) {
    await selectRun(wanted.run, wanted.node, { history: "none" });
  }
  if (wanted.it !== null && state.run && wanted.it >= 0 && wanted.it < state.run.iterations.length) {
    await openIteration(wanted.it, null, { history: "none" });
  }
  return true;
}

window.addEventListener("popstate", () => { followHash(); });

// -- Python highlighting (a small tokenizer; output is built from text nodes) -------------

const KEYWORDS = new Set(("False None True and as assert async await break class continue def del " +
  "elif else except finally for from global if import in is lambda nonlocal not or pass raise " +
  "return try while with yield match case").split(" "));
const BUILTINS = new Set(("print len range str int float list dict set tuple sorted enumerate zip " +
  "map filter sum min max abs any all open isinstance type repr round reversed").split(" "));
const RLM_NAMES = new Set(["llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched",
  "FINAL_VAR", "FINAL", "SHOW_VARS", "context", "answer"]);
const TOKEN = new RegExp([
  String.raw`(#[^\n]*)`,                                                        // 1 comment
  String.raw`([rRbBfFuU]{0,2}(?:"""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?))`, // 2 string
  String.raw`(\b(?:0[xX][0-9a-fA-F_]+|\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?)\b)`, // 3 number
  String.raw`([A-Za-z_][A-Za-z0-9_]*)`,                                         // 4 name
].join("|"), "g");

function highlight(code) {
  const out = el("pre", { cls: "code" });
  let last = 0, previous = "";
  for (const match of code.matchAll(TOKEN)) {
    if (match.index > last) out.append(code.slice(last, match.index));
    const [text, comment, string, number, name] = match;
    let cls = null;
    if (comment) cls = "tok-com";
    else if (string) cls = "tok-str";
    else if (number) cls = "tok-num";
    else if (name) {
      if (KEYWORDS.has(name)) cls = "tok-kw";
      else if (previous === "def" || previous === "class") cls = "tok-def";
      else if (RLM_NAMES.has(name)) cls = "tok-rlm";
      else if (BUILTINS.has(name)) cls = "tok-bi";
      previous = name;
    }
    out.append(cls ? el("span", { cls, text }) : text);
    last = match.index + text.length;
  }
  if (last < code.length) out.append(code.slice(last));
  return out;
}

// -- runs ---------------------------------------------------------------------------

async function loadRuns() {
  const data = await api("/api/runs");
  state.runs = data.runs;
  document.getElementById("root-path").textContent = data.root;
  const list = document.getElementById("runs");
  list.replaceChildren();
  if (!data.runs.length) list.append(el("div", { cls: "muted pad", text: "No .jsonl logs here." }));
  for (const run of data.runs) {
    if (run.id === null) {
      list.append(el("div", { cls: "run-item bad" }, el("div", { cls: "file", text: run.file }),
        el("div", { cls: "error-text", text: run.error })));
      continue;
    }
    const answer = run.final_answer === null ? "no final answer" : "→ " + run.final_answer;
    list.append(el("div", {
      cls: "run-item" + (run.final_answer === null ? " bad" : ""), "data-id": run.id,
      onclick: () => selectRun(run.id, ""),
    },
    el("div", {}, el("b", { text: run.root_model }), " ",
      el("span", { cls: "muted counts", text: `${run.iterations} it · ${run.model_calls} model calls · ${secs(run.time)}` }),
      run.errors ? el("span", { cls: "badge err", text: `${run.errors} err` }) : null),
    run.question ? el("div", { cls: "question", text: run.question }) : null,
    el("div", { cls: "file", text: run.file + (run.runs_in_file > 1 ? ` (run ${run.run + 1}/${run.runs_in_file})` : "") }),
    el("div", { cls: "answer", text: answer })));
  }
  const first = data.runs.find((r) => r.id !== null);
  if (!(await followHash()) && first) await selectRun(first.id, "", { history: "replace" });
}

async function selectRun(runId, node, options) {
  const mode = (options && options.history) || "push";
  state.runId = runId; state.node = node; state.page = 0; state.open.clear();
  for (const item of document.querySelectorAll(".run-item")) {
    item.classList.toggle("active", item.dataset.id === runId);
  }
  const run = await api("/api/run", { id: runId, node });
  state.run = run;
  if (mode !== "none") setHash(null, mode === "push");
  document.getElementById("empty").hidden = true;
  document.getElementById("run").hidden = false;
  document.getElementById("search-results").hidden = true;
  renderHeader(run);
  renderTimeline(run);
  renderPage();
}

function renderHeader(run) {
  const crumbs = document.getElementById("breadcrumbs");
  crumbs.replaceChildren();
  run.breadcrumbs.forEach((crumb, index) => {
    if (index) crumbs.append(" › ");
    crumbs.append(index === run.breadcrumbs.length - 1
      ? el("b", { text: crumb.label })
      : el("a", { text: crumb.label, href: hashFor(run.id, crumb.node, null),
        onclick: (event) => { event.preventDefault(); selectRun(run.id, crumb.node, { history: "push" }); } }));
  });
  const meta = run.metadata || {};
  const facts = run.facts || {};
  document.getElementById("run-header").replaceChildren(
    el("div", { cls: "question", id: "run-question" },
      facts.question ? ["Q: ", el("b", { text: facts.question })] : el("span", { cls: "muted", text: "(the question is not in this log)" })),
    el("div", { cls: "facts" },
      el("span", { id: "run-date", text: facts.date ? "run of " + facts.date.replace("T", " ").slice(0, 19) : "date unknown" }),
      el("span", { id: "run-models" }, "models ", el("b", { text: (facts.models || [run.root_model]).join(", ") })),
      el("span", { id: "run-stop", cls: run.final_answer === null ? "error-text" : "" }, "stopped: ", el("b", { text: facts.stop_reason || "?" })),
      el("span", { id: "run-calls", text: `${num(facts.model_calls)} model calls` })),
    el("div", { cls: "meta" },
      el("span", {}, "model ", el("b", { text: run.root_model })),
      el("span", { text: "backend " + (meta.backend || "?") }),
      el("span", { text: "environment " + (meta.environment_type || "?") }),
      el("span", { text: `max depth ${meta.max_depth ?? "?"} · max iterations ${meta.max_iterations ?? "?"}` }),
      el("span", { text: `${run.iterations.length} iterations · ${run.subcalls} sub-calls` }),
      el("span", { cls: run.errors ? "error-text" : "", text: `${run.errors} errors` }),
      el("span", { text: `time ${secs(run.time) || "?"} (code ${secs(run.code_time)})` }),
      run.depth ? el("span", { text: `depth ${run.depth}` }) : null),
    ...run.warnings.map((w) => el("div", { cls: "error-text", text: w })));
  const box = document.getElementById("final-answer-box");
  box.classList.toggle("missing", run.final_answer === null);
  document.getElementById("final-answer").textContent =
    run.final_answer === null ? "(no final answer recorded)" : run.final_answer;
  const usage = document.getElementById("usage");
  usage.replaceChildren();
  if (run.usage.length) {
    usage.append(el("h3", { text: "Tokens and cost per model" + (run.usage_complete ? "" : " (sub-calls; this log does not record root calls)") }));
    usage.append(el("table", { cls: "usage" },
      el("tr", {}, ["model", "calls", "input tokens", "output tokens", "cost"].map((h) => el("th", { text: h }))),
      run.usage.map((u) => el("tr", {}, el("td", { text: u.model }), el("td", { text: num(u.calls) }),
        el("td", { text: num(u.input_tokens) }), el("td", { text: num(u.output_tokens) }),
        el("td", { text: cost(u.cost) })))));
  }
}

function renderTimeline(run) {
  const timeline = document.getElementById("timeline");
  timeline.replaceChildren();
  const longest = Math.max(1e-9, ...run.iterations.map((it) => it.time || 0));
  const fragment = document.createDocumentFragment();
  for (const it of run.iterations) {
    const height = Math.max(8, Math.round(40 * (it.time || 0) / longest));
    const cls = "tick" + (it.errors ? " err" : "") + (it.final_answer !== null ? " final" : "");
    fragment.append(el("div", {
      cls, height: `${height}px`,
      title: `iteration ${it.number}: ${secs(it.time)}, ${it.blocks} blocks, ${it.subcalls} sub-calls` +
        (it.errors ? `, ${it.errors} errors` : ""),
      onclick: () => openIteration(it.i, null, { history: "push" }),
    }));
  }
  timeline.append(fragment);
}

// -- iterations ---------------------------------------------------------------------

function renderPager(container) {
  const pages = Math.max(1, Math.ceil(state.run.iterations.length / PAGE_SIZE));
  container.replaceChildren();
  if (pages === 1) return;
  container.append(
    el("button", { type: "button", disabled: state.page === 0 ? "disabled" : null,
      onclick: () => { state.page--; renderPage(); } }, "‹ previous"),
    el("span", { text: ` page ${state.page + 1} of ${pages} ` }),
    el("button", { type: "button", disabled: state.page >= pages - 1 ? "disabled" : null,
      onclick: () => { state.page++; renderPage(); } }, "next ›"));
}

function renderPage() {
  const list = document.getElementById("iterations");
  list.replaceChildren();
  const start = state.page * PAGE_SIZE;
  for (const it of state.run.iterations.slice(start, start + PAGE_SIZE)) {
    const card = el("div", {
      cls: "iteration" + (it.errors ? " err" : "") + (it.final_answer !== null ? " final" : ""),
      id: "iteration-" + it.i, "data-i": it.i,
    });
    const header = el("div", { cls: "iteration-header", onclick: () => toggleIteration(it.i) },
      el("span", { cls: "num", text: `Iteration ${it.number}` }),
      el("span", { cls: "badge", text: secs(it.time) || "–" }),
      el("span", { cls: "badge", text: `${it.blocks} blocks` }),
      it.subcalls ? el("span", { cls: "badge", text: `${it.subcalls} sub-calls` }) : null,
      it.errors ? el("span", { cls: "badge err", text: `${it.errors} errors` }) : null,
      it.final_answer !== null ? el("span", { cls: "badge final", text: "final answer" }) : null,
      el("span", { cls: "preview", text: it.preview }));
    card.append(header);
    list.append(card);
    if (state.open.has(it.i)) expand(card, it.i);
  }
  renderPager(document.getElementById("pager-top"));
  renderPager(document.getElementById("pager-bottom"));
}

function toggleIteration(i) {
  const card = document.getElementById("iteration-" + i);
  if (state.open.has(i)) {
    state.open.delete(i);
    card.querySelector(".iteration-body")?.remove();
  } else {
    state.open.add(i);
    setHash(i, true); // the opened iteration is a history entry and a deep link
    expand(card, i);
  }
}

async function expand(card, i) {
  const key = `${state.runId}|${state.node}|${i}`;
  let doc = state.details.get(key);
  if (!doc) {
    doc = await api("/api/iteration", { id: state.runId, node: state.node, i });
    state.details.set(key, doc);
  }
  if (card.querySelector(".iteration-body") || !state.open.has(i)) return card;
  card.append(renderIteration(doc));
  return card;
}

function renderIteration(doc) {
  const body = el("div", { cls: "iteration-body" });
  const promptBox = el("div");
  body.append(el("div", { cls: "label" }, "Root model response ",
    el("button", { type: "button", onclick: async (event) => {
      event.target.disabled = true;
      const prompt = await api("/api/prompt", { id: state.runId, node: state.node, i: doc.i });
      promptBox.append(...prompt.messages.map((m) =>
        el("details", {}, el("summary", { text: `${m.role}: ${m.content.slice(0, 100)}` }), el("pre", { text: m.content }))));
    } }, `show prompt (${doc.prompt_messages} messages)`)));
  body.append(promptBox, el("pre", { cls: "response", text: doc.response }));
  for (const block of doc.blocks) body.append(renderBlock(doc, block));
  if (doc.final_answer !== null) {
    body.append(el("div", { cls: "label", text: "Final answer" }), el("pre", { cls: "final-text", text: doc.final_answer }));
  }
  return body;
}

function renderBlock(doc, block) {
  const box = el("div", { cls: "block" + (block.failed ? " err" : ""), id: `block-${doc.i}-${block.index}` });
  box.append(el("div", { cls: "label", text: `Code block ${block.index} · ${secs(block.time)}` + (block.failed ? " · error" : "") }));
  box.append(highlight(block.code));
  if (block.stdout) box.append(el("div", { cls: "label", text: "stdout" + (block.output_cut ? " (cut in the log: head and tail kept)" : "") }), el("pre", { cls: "stdout", text: block.stdout }));
  if (block.stderr) box.append(el("div", { cls: "label", text: "stderr" }), el("pre", { cls: "stderr", text: block.stderr }));
  if (block.error) box.append(el("div", { cls: "error-text", text: "Error: " + block.error }));
  const names = Object.keys(block.locals);
  if (names.length) {
    box.append(el("details", {}, el("summary", { text: `variables (${names.length})` }),
      el("pre", { text: names.map((n) => `${n} = ${block.locals[n]}`).join("\n") })));
  }
  if (block.calls.length) {
    box.append(el("div", { cls: "label", text: `Sub-calls (${block.calls.length})` }), renderCalls(block.calls));
  }
  if (block.final_answer !== null) box.append(el("div", { cls: "badge final", text: "submitted the final answer" }));
  return box;
}

function renderCalls(calls) {
  const list = el("ul", { cls: "calls" });
  for (const call of calls) {
    const item = el("li", { cls: "subcall" + (call.error ? " err" : ""), "data-address": call.address });
    item.append(el("button", { type: "button", onclick: () => showCall(call) },
      el("b", { text: call.model }), ` · depth ${call.depth} · ${num(call.input_tokens)}+${num(call.output_tokens)} tokens · ${cost(call.cost)} · ${secs(call.time)}`,
      call.child ? el("span", { cls: "badge", text: `child run: ${call.child.iterations} iterations` }) : null,
      call.error ? el("span", { cls: "badge err", text: "error" }) : null,
      el("div", { cls: "muted", text: "↳ " + call.prompt.slice(0, 140) })));
    if (call.child && call.child.calls.length) item.append(renderCalls(call.child.calls));
    list.append(item);
  }
  return list;
}

function showCall(call) {
  const panel = document.getElementById("subcall-panel");
  const body = document.getElementById("subcall-body");
  body.replaceChildren(...[
    el("div", { cls: "meta" }, el("b", { text: call.model }), ` · depth ${call.depth} · ${num(call.input_tokens)} in · ${num(call.output_tokens)} out · ${cost(call.cost)} · ${secs(call.time)}`),
    call.error ? el("div", { cls: "error-text", text: "Error: " + call.error }) : null,
    el("div", { cls: "label", text: "Prompt" }), el("pre", { cls: "stdout subcall-prompt", text: call.prompt }),
    el("div", { cls: "label", text: "Response" }), el("pre", { cls: "stdout subcall-response", text: call.response }),
  ].filter(Boolean));
  if (call.child) {
    const node = call.address;
    body.append(el("div", { cls: "label", text: "Child run" }),
      el("div", {}, `${call.child.iterations} iterations; answer: `, el("b", { text: call.child.final_answer ?? "(none)" })),
      el("button", { type: "button", id: "open-child", onclick: () => selectRun(state.runId, node, { history: "push" }) }, "open the child run ›"));
  }
  panel.hidden = false;
}

async function openIteration(i, blockIndex, options) {
  const mode = (options && options.history) || "push";
  if (mode !== "none") setHash(i, mode === "push");
  state.page = Math.floor(i / PAGE_SIZE);
  if (!document.getElementById("iteration-" + i)) renderPage();
  const card = document.getElementById("iteration-" + i);
  if (!state.open.has(i)) { state.open.add(i); await expand(card, i); }
  const target = (blockIndex !== null && document.getElementById(`block-${i}-${blockIndex}`)) || card;
  target.scrollIntoView({ block: "center" });
  target.classList.remove("flash"); void target.offsetWidth; target.classList.add("flash");
}

// -- search -------------------------------------------------------------------------

async function search(query) {
  const box = document.getElementById("search-results");
  if (!query.trim() || !state.runId) { box.hidden = true; return; }
  const result = await api("/api/search", { id: state.runId, node: state.node, q: query });
  box.replaceChildren(el("div", {}, el("b", { text: `${result.total} matches for “${query}”` }),
    result.total > result.hits.length ? ` (first ${result.hits.length} shown)` : ""));
  const lower = query.toLowerCase();
  for (const hit of result.hits) {
    const at = hit.snippet.toLowerCase().indexOf(lower);
    const snippet = at < 0 ? [hit.snippet] : [hit.snippet.slice(0, at),
      el("mark", { text: hit.snippet.slice(at, at + query.length) }), hit.snippet.slice(at + query.length)];
    box.append(el("div", { cls: "hit", onclick: () => openIteration(hit.i, hit.block) },
      el("b", { text: `iteration ${hit.number}` + (hit.block !== null ? ` block ${hit.block}` : "") }),
      ` · ${hit.where}: `, ...snippet));
  }
  box.hidden = false;
}

document.getElementById("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  search(document.getElementById("search").value);
});
let searchTimer = null;
document.getElementById("search").addEventListener("input", (event) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => search(event.target.value), 250);
});
document.getElementById("close-panel").addEventListener("click", () => {
  document.getElementById("subcall-panel").hidden = true;
});

loadRuns().catch((error) => {
  document.getElementById("runs").replaceChildren(el("div", { cls: "error-text pad", text: String(error) }));
});
