// BioCLIP image search: the page's behaviour.
// Everything that comes from the server is inserted with textContent or as
// attributes set through the DOM, never as HTML, so names can't inject markup.
"use strict";

(() => {
  const API = "/api";

  // The field's terms come from the server (GET /api/vocabulary), never repeated here:
  // taxonomy ranks from broad to specific, the ranks a filter may name, each scope's phrase,
  // and each parameter's default and bounds. Set by loadVocabulary() before anything runs.
  let RANKS = [];
  let FILTER_RANKS = [];
  let SCOPE_PHRASES = {};
  let DEFAULTS = {};
  // Parameters a permalink may carry that the page has no control for; kept so re-runs keep them.
  const PASSED_THROUGH = ["predict"];

  const $ = (id) => document.getElementById(id);
  const els = {
    notice: $("notice"),
    dropZone: $("drop-zone"),
    fileInput: $("file-input"),
    previews: $("previews"),
    preview: $("preview"),
    previewMore: $("preview-more"),
    previewLabel: $("preview-label"),
    textForm: $("text-form"),
    textInput: $("text-input"),
    scope: $("scope"),
    topN: $("top-n"),
    rank: $("rank"),
    nprobe: $("nprobe"),
    minSimilarity: $("min-similarity"),
    maxPerSpecies: $("max-per-species"),
    maxPerSource: $("max-per-source"),
    textSuggestions: $("text-suggestions"),
    filterSuggestions: $("filter-suggestions"),
    examples: $("examples"),
    examplesList: $("examples-list"),
    filters: $("filters"),
    status: $("status"),
    error: $("error"),
    outcome: $("outcome"),
    queryLabel: $("query-label"),
    exportCsv: $("export-csv"),
    exportJson: $("export-json"),
    copyLink: $("copy-link"),
    identityNote: $("identity-note"),
    similarityScale: $("similarity-scale"),
    predictionBody: $("prediction-body"),
    consensusBody: $("consensus-body"),
    treeBody: $("tree-body"),
    results: $("results"),
    detail: $("detail"),
    detailTitle: $("detail-title"),
    detailBody: $("detail-body"),
    detailClose: $("detail-close"),
    footer: $("footer-status"),
  };

  // The query the controls re-run:
  //   {kind: "image", files: [File] | null, queryId}   files is null when it came from a link
  //   {kind: "text", text, queryId}
  //   {kind: "record", recordId, queryId}
  // queryId is set from the first answer, so a re-run sends the id and the photo is not embedded again.
  let current = null;
  // Parameters from a permalink that have no control on the page (see PASSED_THROUGH).
  let passedThrough = {};
  // The newest result, for the export links and "Copy link".
  let lastResult = null;
  // Only the newest search may touch the page; older ones are aborted.
  let inFlight = null;
  let searchSeq = 0;
  // Object URLs of the previews, revoked when replaced so files don't pile up in memory.
  let previewUrls = [];
  // The card that opened the detail panel, to give focus back to it on close.
  let detailOpener = null;
  // The query and option values of the newest search sent: a "change" event that leaves them
  // as they were (a number typed before choosing the photo, then the field losing focus)
  // must not run the same search again and redraw what the user is looking at.
  let sent = null;

  // ---------- small DOM helpers ----------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // A span (valid inside a <button>) standing in for an image that can't be shown.
  function placeholder(text) {
    const label = text || "image unavailable";
    const node = el("span", "placeholder", label);
    node.setAttribute("role", "img");
    node.setAttribute("aria-label", label);
    return node;
  }

  // An <img> that swaps itself for the placeholder if the server can't deliver it
  // (the image endpoint answers errors as JSON, which fails to decode). A record with
  // no published image has no URL at all, and says so.
  function imageOrPlaceholder(src, alt, lazy) {
    if (!src) return placeholder("no published image");
    const img = el("img");
    if (lazy) img.loading = "lazy";
    img.decoding = "async";
    img.alt = alt;
    img.addEventListener("error", () => img.replaceWith(placeholder("image unavailable")), { once: true });
    img.src = src;
    return img;
  }

  function plural(count, one, many) {
    return `${count} ${count === 1 ? one : many || `${one}s`}`;
  }

  // ---------- taxonomy formatting ----------

  // The most specific name known, and whether it is italicised by convention
  // (genus and below are; family and above are not).
  function bestName(taxonomy) {
    const t = taxonomy || {};
    // The server names a species by the vocabulary's one rule (genus and epithet): not redone here.
    if (t.scientific_name) return { text: t.scientific_name, italic: true };
    if (t.genus) return { text: `${t.genus} sp.`, italic: true };
    for (const rank of RANKS.slice(0, RANKS.indexOf("genus")).reverse()) {
      if (t[rank]) return { text: t[rank], italic: false, rank };
    }
    return { text: "Unidentified", italic: false };
  }

  function nameNode(taxonomy, className) {
    const name = bestName(taxonomy);
    const node = el("span", className);
    if (name.rank) node.append(el("span", "rank-label", `${name.rank} `));
    node.append(el(name.italic ? "i" : "span", null, name.text));
    return node;
  }

  // A taxon's name at a rank, italic at genus and species.
  function taxonNode(name, rank) {
    return el(rank === "genus" || rank === "species" ? "i" : "span", "taxon", name);
  }

  function formatSimilarity(value) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(3) : "–";
  }

  function percent(share) {
    if (typeof share !== "number" || !Number.isFinite(share)) return "–";
    const value = share * 100;
    return `${value >= 10 || value === 0 ? Math.round(value) : value.toFixed(1)}%`;
  }

  // ---------- status and errors ----------

  function setStatus(text) {
    els.status.textContent = text;
  }

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.textContent = "";
    els.error.hidden = true;
  }

  function setBusy(busy) {
    for (const node of [els.results, els.outcome, els.dropZone]) {
      if (busy) node.setAttribute("aria-busy", "true");
      else node.removeAttribute("aria-busy");
    }
  }

  // Turns a failed response into one readable sentence. The API answers
  // {"error": {"code", "message"}}, but a proxy in between may answer HTML.
  async function readError(response) {
    let message = "";
    let code = "";
    try {
      const body = await response.json();
      if (body && body.error && typeof body.error.message === "string") {
        message = body.error.message;
        code = typeof body.error.code === "string" ? body.error.code : "";
      } else if (body && typeof body.detail === "string") {
        message = body.detail;
      }
    } catch {
      // Not JSON: fall through to a message built from the status.
    }
    const generic = {
      413: "The file is too large.",
      415: "That file type is not supported; please choose an image.",
      422: "The request was not valid (is the file an image, and are the options in range?).",
      429: "Too many searches from this browser.",
      502: "A service failed to answer.",
      503: "A service is unavailable right now.",
      504: "A service took too long to answer.",
    };
    if (!message) message = generic[response.status] || `The server answered ${response.status} ${response.statusText}`.trim() + ".";
    // The server's words as it wrote them (a file or field name keeps its case); only the stop is added.
    message = withStop(message);
    if (response.status === 429) {
      const wait = Number(response.headers.get("Retry-After"));
      message += Number.isFinite(wait) && wait > 0 ? ` Try again in ${plural(Math.ceil(wait), "second")}.` : " Try again in a minute.";
    } else if (response.status >= 502) {
      message += " Please try again later.";
    }
    return { status: response.status, code, message };
  }

  function withStop(text) {
    const trimmed = String(text).trim();
    return !trimmed || /[.!?…]$/.test(trimmed) ? trimmed : `${trimmed}.`;
  }

  // ---------- reading the controls ----------

  // "order:Lepidoptera, family:Apidae" -> [{rank, value}]; throws with a readable message.
  function parseFilters(text) {
    const filters = [];
    for (const part of text.split(",")) {
      const item = part.trim();
      if (!item) continue;
      const colon = item.indexOf(":");
      const rank = colon > 0 ? item.slice(0, colon).trim().toLowerCase().replace(/\s+/g, "_") : "";
      const value = colon > 0 ? item.slice(colon + 1).trim() : "";
      if (!FILTER_RANKS.includes(rank) || !value) {
        throw new Error(`“${item}” is not a taxon filter: write rank:name, e.g. order:Lepidoptera (ranks: ${FILTER_RANKS.join(", ")}).`);
      }
      filters.push({ rank, value });
    }
    if (filters.length > 8) throw new Error("At most 8 taxon filters.");
    return filters;
  }

  // The controls whose change re-runs the current search.
  const optionControls = [els.scope, els.topN, els.rank, els.nprobe, els.minSimilarity, els.maxPerSpecies, els.maxPerSource, els.filters];

  // The option controls' raw values as one string, to tell whether any has changed.
  function controlValues() {
    return JSON.stringify(optionControls.map((c) => c.value));
  }

  // Reads the option controls; returns null (and says why) when one is out of range,
  // so a bad value is reported here rather than as a 422 from the server.
  function readOptions() {
    const checks = [
      [els.topN, `Results must be a whole number from ${els.topN.min} to ${els.topN.max}.`],
      [els.nprobe, `nprobe must be a whole number of at least ${els.nprobe.min}, or blank.`],
      [els.minSimilarity, `Min. similarity must be a number from ${els.minSimilarity.min} to ${els.minSimilarity.max}, or blank.`],
      [els.maxPerSpecies, `Per species must be a whole number from ${els.maxPerSpecies.min} to ${els.maxPerSpecies.max}, or blank.`],
      [els.maxPerSource, `Per source record must be a whole number from ${els.maxPerSource.min} to ${els.maxPerSource.max}, or blank.`],
    ];
    // Nothing is searched: the previous search's "N hits in …" would read as this one's outcome.
    const refuse = (message, input) => {
      setStatus("");
      showError(message);
      input.focus();
      return null;
    };
    for (const [input, message] of checks) {
      if (!input.checkValidity()) return refuse(message, input);
    }
    let filters;
    try {
      filters = parseFilters(els.filters.value);
    } catch (err) {
      return refuse(err.message, els.filters);
    }
    const number = (input) => (input.value.trim() === "" ? null : Number(input.value));
    return {
      top_n: number(els.topN) ?? DEFAULTS.top_n,
      nprobe: number(els.nprobe),
      scope: els.scope.value,
      rank: els.rank.value,
      min_similarity: number(els.minSimilarity),
      max_per_species: number(els.maxPerSpecies),
      max_per_source: number(els.maxPerSource),
      filters,
      ...passedThrough,
    };
  }

  // ---------- the search itself ----------

  function jsonRequest(query, options) {
    const body = {};
    for (const [key, value] of Object.entries(options)) {
      if (value !== null && value !== undefined) body[key] = value;
    }
    Object.assign(body, query);
    return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }

  function uploadRequest(files, options) {
    const form = new FormData();
    for (const file of files) form.append("image", file, file.name || "pasted-image");
    for (const [key, value] of Object.entries(options)) {
      if (key === "filters") {
        for (const f of value) form.append("filter", `${f.rank}:${f.value}`);
      } else if (value !== null && value !== undefined) {
        form.append(key, String(value));
      }
    }
    // No Content-Type header: the browser adds the multipart boundary itself.
    return { method: "POST", body: form };
  }

  // What to send for the current query: the photo only until the gateway has given it an id.
  function requestFor(query, options, forceUpload) {
    if (query.kind === "image") {
      if (query.queryId && !forceUpload) return jsonRequest({ query_id: query.queryId }, options);
      return uploadRequest(query.files, options);
    }
    if (query.kind === "text") return jsonRequest({ text: query.text }, options);
    return jsonRequest({ record_id: query.recordId }, options);
  }

  function progressText(query, upload) {
    if (query.kind === "image" && upload) {
      const count = query.files.length;
      return count === 1 ? "Uploading the photo and searching…" : `Uploading ${count} photos and searching…`;
    }
    return "Searching…";
  }

  // Starts a search for the newest query; older searches still running are aborted.
  function begin() {
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const seq = ++searchSeq;
    clearError();
    setBusy(true);
    return { controller, seq, live: () => seq === searchSeq };
  }

  function finish(run) {
    if (!run.live()) return;
    setBusy(false);
    inFlight = null;
  }

  async function runSearch(query) {
    // Remember the query even if an option is invalid, so fixing the option re-runs it.
    current = query;
    try {
      await vocabularyReady; // the controls' bounds and defaults
    } catch {
      return;
    }
    clearError();
    const options = readOptions();
    if (!options) return;
    sent = { query, controls: controlValues() };
    const run = begin();
    try {
      let upload = query.kind === "image" && !query.queryId;
      setStatus(progressText(query, upload));
      let response = await fetch(`${API}/search`, { ...requestFor(query, options, false), signal: run.controller.signal });
      // The gateway keeps recent query vectors only: when it has forgotten this photo, send it again.
      if (response.status === 410 && query.kind === "image" && query.files && !upload) {
        if (!run.live()) return;
        upload = true;
        setStatus("The server no longer holds this photo; uploading it again…");
        response = await fetch(`${API}/search`, { ...requestFor(query, options, true), signal: run.controller.signal });
      }
      await settle(run, query, response);
    } catch (err) {
      failed(run, err);
    } finally {
      finish(run);
    }
  }

  // A search from a permalink's query string (q, text or record, and the parameters).
  async function runLink(params) {
    const run = begin();
    try {
      setStatus("Searching…");
      const response = await fetch(`${API}/search?${params.toString()}`, { signal: run.controller.signal });
      const query = params.has("q")
        ? { kind: "image", files: null, queryId: params.get("q") }
        : params.has("text")
          ? { kind: "text", text: params.get("text") }
          : { kind: "record", recordId: Number(params.get("record")) };
      current = query;
      sent = { query, controls: controlValues() };
      const result = await settle(run, query, response);
      if (result) {
        // The controls show what the server searched with (a link may leave a parameter to its
        // default), so the Results box matches the hits and the next change re-runs the same count.
        if (result.parameters && run.live()) {
          els.topN.value = String(result.parameters.top_n);
          sent = { query, controls: controlValues() };
        }
        noteIdentity(params, result.identity);
      }
    } catch (err) {
      failed(run, err);
    } finally {
      finish(run);
    }
  }

  // Shows a search's answer (or its error) if it is still the newest; returns the result.
  async function settle(run, query, response) {
    if (!response.ok) {
      const problem = await readError(response);
      if (!run.live()) return null;
      setStatus("");
      if (problem.status === 410 || problem.code === "query_expired") {
        // Only a search from a link can get here: a photo chosen on this page is sent again.
        query.queryId = null;
        showError(
          "The photo behind this link is no longer held by the server (it keeps recent searches only). " +
            "Upload the photo again to search with these options.",
        );
        current = null;
        return null;
      }
      showError(problem.message);
      return null;
    }
    const result = await response.json();
    if (!run.live()) return null;
    query.queryId = result.query_id;
    lastResult = result;
    renderResult(result);
    setStatus(summary(result));
    revealResults();
    explainEmptyFilters(result);
    if (typeof result.permalink === "string" && result.permalink.startsWith("/")) {
      history.replaceState(null, "", result.permalink);
    }
    return result;
  }

  function failed(run, err) {
    // An aborted search was replaced by a newer one, which owns the page now.
    if (err && err.name === "AbortError") return;
    if (!run.live()) return;
    setStatus("");
    showError("Could not reach the server. Check your connection and try again.");
  }

  function summary(result) {
    const hits = Array.isArray(result.hits) ? result.hits.length : 0;
    const ms = typeof result.took_ms === "number" ? Math.round(result.took_ms) : null;
    let text = `${plural(hits, "hit")}${ms !== null ? ` in ${ms} ms` : ""}`;
    if (typeof result.nprobe === "number") text += ` (nprobe ${result.nprobe})`;
    const params = result.parameters || {};
    if (result.exhausted) {
      const scope = SCOPE_PHRASES[params.scope] || params.scope || "the collection";
      const narrowed = [];
      if (Array.isArray(params.filters) && params.filters.length) narrowed.push("the taxon filters");
      if (typeof params.min_similarity === "number") narrowed.push("the minimum similarity");
      text += ` — fewer than ${params.top_n} records matched within reach (${scope}${narrowed.length ? `, ${narrowed.join(" and ")}` : ""}).`;
    } else {
      text += ".";
    }
    return text;
  }

  // A link made with another model or index may not give the same hits: say so.
  function noteIdentity(params, identity) {
    const was = { model: params.get("model"), index: params.get("index") };
    const now = identity || {};
    const changed = ["model", "index"].filter((key) => was[key] && now[key] && was[key] !== now[key]);
    if (!changed.length) {
      els.identityNote.hidden = true;
      return;
    }
    const parts = changed.map((key) => `${key} ${was[key]} (now ${now[key]})`);
    els.identityNote.textContent = `This link was made with ${parts.join(" and ")}; the hits may differ from when it was made.`;
    els.identityNote.hidden = false;
  }

  // ---------- the result ----------

  function renderResult(result) {
    els.outcome.hidden = false;
    els.identityNote.hidden = true;
    els.queryLabel.replaceChildren(...queryLabel(result));
    renderActions(result);
    renderPrediction(result);
    renderConsensus(result);
    renderTree(result.tree);
    renderHits(result);
    searchKind = result.query;
    if (similarityScale) showSimilarityScale(similarityScale);
    else loadInfo({ retry: true });
  }

  function queryLabel(result) {
    const kinds = { image: "Photo", text: "Name", record: "From" };
    const label = result.query === "image" && !result.label ? "uploaded photo" : result.label;
    return [el("span", "muted", `${kinds[result.query] || "Query"}: `), el("span", null, label)];
  }

  function renderActions(result) {
    const link = typeof result.permalink === "string" ? result.permalink : "";
    const query = link.includes("?") ? link.slice(link.indexOf("?") + 1) : "";
    const ready = Boolean(query);
    for (const [a, format] of [[els.exportCsv, "csv"], [els.exportJson, "json"]]) {
      if (ready) {
        a.href = `${API}/search?${query}&format=${format}&download=true`;
        a.removeAttribute("aria-disabled");
      } else {
        a.removeAttribute("href");
        a.setAttribute("aria-disabled", "true");
      }
    }
    els.copyLink.disabled = !ready;
  }

  function renderPrediction(result) {
    const body = [];
    const prediction = result.prediction;
    if (prediction && Array.isArray(prediction.predictions) && prediction.predictions.length) {
      // Made within the user's filter (prediction.within) when one restricts it: say so.
      const within = prediction.within && prediction.within.rank ? ` within ${prediction.within.rank} ${prediction.within.value}` : "";
      body.push(el("p", "panel-note", `Zero-shot, at ${prediction.rank} rank${within}:`));
      const list = el("ol", "predictions");
      for (const item of prediction.predictions) {
        const li = el("li", "prediction");
        const line = el("span", "prediction-line");
        const name = el("span", "prediction-name");
        name.append(taxonNode(item.name, item.rank || prediction.rank));
        if (item.common_name) name.append(el("span", "common-name", item.common_name));
        line.append(name, el("span", "probability", percent(item.probability)));
        const bar = el("span", "bar");
        bar.setAttribute("aria-hidden", "true");
        const fill = el("span", "bar-fill");
        fill.style.width = `${Math.max(0, Math.min(1, Number(item.probability) || 0)) * 100}%`;
        bar.append(fill);
        li.append(line, bar);
        list.append(li);
      }
      body.push(list);
    } else if (result.prediction_error) {
      body.push(el("p", "soft", `prediction unavailable: ${result.prediction_error}`));
    } else if (prediction) {
      body.push(el("p", "soft", "The model made no prediction."));
    } else {
      body.push(el("p", "soft", "No prediction was asked for."));
    }
    els.predictionBody.replaceChildren(...body);
  }

  function renderConsensus(result) {
    const body = [];
    const c = result.consensus;
    if (c) {
      const p = el("p", "consensus-name");
      p.append(taxonNode(c.name, c.rank), el("span", "muted", ` (${c.rank})`));
      const hits = Array.isArray(result.hits) ? result.hits.length : 0;
      const unknown = c.unknown ? ` ${c.unknown} do not name a ${c.rank}.` : "";
      body.push(p, el("p", "panel-note", `${percent(c.share)} of the hits' similarity; ${c.hits} of ${plural(hits, "hit")}.${unknown}`));
    } else {
      body.push(el("p", "soft", "The hits name no taxon at this rank."));
    }
    const top = result.prediction && result.prediction.predictions && result.prediction.predictions[0];
    const agreement = el("p", "agreement");
    agreement.id = "agreement";
    if (result.agreement === true) {
      agreement.classList.add("agrees");
      agreement.textContent = "✓ The prediction agrees with the hits.";
    } else if (result.agreement === false) {
      agreement.classList.add("differs");
      agreement.textContent = `≠ The prediction differs from the hits: the model says ${top ? top.name : "another taxon"}, the hits say ${c ? c.name : "another"}.`;
    } else {
      agreement.textContent = top ? "The hits name no taxon at this rank to compare with." : "No prediction to compare the hits with.";
      agreement.classList.add("soft");
    }
    body.push(agreement);
    els.consensusBody.replaceChildren(...body);
  }

  // The hits' taxonomy as nested disclosures with counts; the broad ranks start open.
  function renderTree(tree) {
    const nodes = Array.isArray(tree) ? tree : [];
    if (!nodes.length) {
      els.treeBody.replaceChildren(el("p", "soft", "No taxonomy to show."));
      return;
    }
    els.treeBody.replaceChildren(treeList(nodes, 0));
  }

  // Each node: a disclosure button (its rank) for the ranks under it, the taxon's name as a button
  // that filters to it, and its hit count. Buttons side by side, not a button inside a <summary>.
  function treeList(nodes, depth) {
    const list = el("ul", depth === 0 ? "tree-list tree-root" : "tree-list");
    for (const node of nodes) {
      const li = el("li");
      const row = el("span", "tree-row");
      const count = el("span", "count", String(node.count));
      count.title = plural(node.count, "hit");
      if (Array.isArray(node.children) && node.children.length) {
        // Open down to order, or all the way while the tree does not branch.
        const children = treeList(node.children, depth + 1);
        row.append(treeToggle(node, children, depth < 3 || nodes.length === 1), treeName(node), count);
        li.append(row, children);
      } else {
        li.className = "leaf";
        row.append(el("span", "rank-label", `${node.rank} `), treeName(node), count);
        li.append(row);
      }
      list.append(li);
    }
    return list;
  }

  function treeToggle(node, children, open) {
    const toggle = el("button", "tree-toggle");
    toggle.type = "button";
    const arrow = el("span", "tree-arrow", "▸");
    arrow.setAttribute("aria-hidden", "true");
    const name = typeof node.name === "string" ? node.name : "unknown";
    toggle.append(arrow, el("span", "rank-label", node.rank), el("span", "visually-hidden", ` ${name}`));
    const show = (shown) => {
      toggle.setAttribute("aria-expanded", String(shown));
      children.hidden = !shown;
    };
    show(open);
    toggle.addEventListener("click", () => show(toggle.getAttribute("aria-expanded") !== "true"));
    return toggle;
  }

  function renderHits(result) {
    const hits = Array.isArray(result.hits) ? result.hits : [];
    const cards = hits.map(hitCard);
    els.results.replaceChildren(...cards);
    if (!cards.length) els.results.append(el("p", "empty", "No records matched. Try a wider scope, fewer filters or a lower minimum similarity."));
  }

  function hitCard(hit) {
    const taxonomy = hit.taxonomy || {};
    const card = el("button", "hit");
    card.type = "button";
    card.dataset.recordId = String(hit.record_id);

    // The card's accessible name is its visible text (rank, names, similarity): no aria-label that
    // would say it differently. The thumbnail's alt is empty: the name is already in the text.
    const figure = el("span", "thumb");
    figure.append(imageOrPlaceholder(hit.thumbnail_url, "", true));
    figure.append(el("span", "rank", `#${hit.rank}`));

    const text = el("span", "hit-text");
    text.append(nameNode(taxonomy, "sci-name"));
    if (taxonomy.common_name) text.append(el("span", "common-name", taxonomy.common_name));
    const similarity = el("span", "similarity");
    similarity.append(el("span", "muted", "sim "), formatSimilarity(hit.similarity));
    similarity.title = "similarity to the query";
    text.append(similarity);

    card.append(figure, text);
    // A <button> already answers Enter and Space with a click.
    card.addEventListener("click", () => openDetail(hit, card));
    return card;
  }

  // ---------- detail panel ----------

  function openDetail(hit, opener) {
    detailOpener = opener || null;
    const taxonomy = hit.taxonomy || {};
    const name = bestName(taxonomy);

    els.detailTitle.replaceChildren(nameNode(taxonomy, "sci-name"));

    const figure = compareFigures(hit, name);

    const info = el("div", "detail-info");
    const searchFrom = el("button", "button search-from", "Search from this");
    searchFrom.type = "button";
    searchFrom.id = "search-from";
    searchFrom.addEventListener("click", () => searchFromRecord(hit));
    info.append(hitPosition(hit), taxonomyTable(taxonomy), sourceList(hit), rightsNote(hit));
    const links = linkList(hit);
    if (links) info.append(links);
    info.append(searchFrom);

    els.detailBody.replaceChildren(figure, info);

    if (typeof els.detail.showModal === "function") {
      if (!els.detail.open) els.detail.showModal();
    } else {
      els.detail.setAttribute("open", "");
    }
    els.detailClose.focus();
  }

  function taxonomyTable(taxonomy) {
    const table = el("table", "taxonomy");
    table.append(el("caption", null, "Taxonomy"));
    const tbody = el("tbody");
    const rows = RANKS.map((rank) => [rank, taxonomy[rank]]);
    rows.push(["common name", taxonomy.common_name]);
    for (const [rank, value] of rows) {
      const tr = el("tr");
      const th = el("th", null, rank);
      th.scope = "row";
      // Genus and species are italicised in biology; the rest are not.
      const td = el("td");
      if (value) td.append(el(rank === "genus" || rank === "species" ? "i" : "span", null, value));
      else td.append(el("span", "muted", "—"));
      tr.append(th, td);
      tbody.append(tr);
    }
    table.append(tbody);
    return table;
  }

  function sourceList(hit) {
    const dl = el("dl", "source");
    const training = hit.in_bioclip2_training === true ? "yes" : hit.in_bioclip2_training === false ? "no" : null;
    const rows = [
      ["Source dataset", hit.source_dataset],
      ["Publisher", hit.publisher],
      ["Image type", hit.img_type],
      ["Basis of record", hit.basis_of_record],
      ["Record id", hit.record_id],
      ["Source id", hit.source_id],
      ["In BioCLIP-2 training", training],
      ["Similarity", hit.similarity !== undefined ? formatSimilarity(hit.similarity) : null],
      ["Licence", hit.license],
      ["Rights holder", hit.rights_holder],
      ["Rights", hit.rights],
    ];
    for (const [term, value] of rows) {
      if (value === null || value === undefined || value === "") continue;
      dl.append(el("dt", null, term), el("dd", null, value));
    }
    return dl;
  }

  // Where the image's licence and rights are found. The collection's metadata may hold them (shown in the
  // source list above); when it holds none for this record, the source's own page is where they are.
  function rightsNote(hit) {
    const known = [hit.license, hit.rights_holder, hit.rights].some((v) => typeof v === "string" && v);
    const note = el("p", "rights-note");
    note.id = "rights-note";
    if (!safeHref(hit.source_record_url)) {
      const source = hit.source_dataset ? `its source (${hit.source_dataset})` : "its source";
      note.textContent = known
        ? `Licence and rights as the collection's metadata gives them; ${source} is the authority on them.`
        : `The collection's metadata holds no licence or rights for this image: ${source} gives them.`;
      return note;
    }
    const link = el("a", null, "source record's page");
    link.href = hit.source_record_url;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    if (known) note.append("Licence and rights as the collection's metadata gives them; the ", link, " is the authority on them.");
    else note.append("The collection's metadata holds no licence or rights for this image: the ", link, " gives its licence and rights holder.");
    return note;
  }

  // Links open in a new tab; noopener keeps the external page from reaching back.
  function linkList(hit) {
    const items = [
      ["original image", hit.image_url],
      ["source record", hit.source_record_url],
    ].filter(([, href]) => safeHref(href));
    if (!items.length) return null;
    const list = el("ul", "links");
    for (const [text, href] of items) {
      const a = el("a", null, text);
      a.href = href;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      const li = el("li");
      li.append(a);
      list.append(li);
    }
    return list;
  }

  // Only web links: a javascript: URL in the data must never become clickable.
  function safeHref(href) {
    if (typeof href !== "string" || !href) return false;
    try {
      const url = new URL(href, location.href);
      return url.protocol === "http:" || url.protocol === "https:";
    } catch {
      return false;
    }
  }

  function closeDetail() {
    if (typeof els.detail.close === "function") {
      // close() fires the "close" event, whose handler gives focus back.
      if (els.detail.open) els.detail.close();
    } else if (els.detail.hasAttribute("open")) {
      els.detail.removeAttribute("open");
      restoreFocus();
    }
  }

  function restoreFocus() {
    if (detailOpener && document.contains(detailOpener)) detailOpener.focus();
    detailOpener = null;
  }

  // The record becomes the query: its own vector is searched (nothing is uploaded).
  function searchFromRecord(hit) {
    detailOpener = null;
    closeDetail();
    const name = bestName(hit.taxonomy);
    showPreviews(
      hit.thumbnail_url ? [{ src: hit.thumbnail_url, alt: `Record ${hit.record_id}: ${name.text}` }] : [],
      `From record ${hit.record_id} (${name.text}).`,
    );
    els.textInput.value = "";
    runSearch({ kind: "record", recordId: hit.record_id, queryId: null });
    els.results.focus({ preventScroll: true });
  }

  // ---------- choosing photos ----------

  function showPreviews(images, label) {
    for (const url of previewUrls) URL.revokeObjectURL(url);
    previewUrls = [];
    if (!images.length && !label) {
      els.previews.hidden = true;
      els.dropZone.classList.remove("has-preview");
      return;
    }
    const [first, ...rest] = images;
    els.preview.hidden = !first;
    if (first) {
      els.preview.src = first.src;
      els.preview.alt = first.alt;
    } else {
      els.preview.removeAttribute("src");
    }
    els.previewMore.replaceChildren(
      ...rest.map((image) => {
        const img = el("img", "preview-small");
        img.src = image.src;
        img.alt = image.alt;
        return img;
      }),
    );
    els.previewLabel.textContent = label || "";
    els.previews.hidden = false;
    els.dropZone.classList.add("has-preview");
  }

  // A photo the browser cannot show (HEIC outside Safari, TIFF): when its preview fails to decode, the
  // gateway sends a JPEG of it, decoded as the search decodes it. Only the preview still showing that
  // photo is replaced.
  function previewViaGateway(img, file) {
    const src = img.src;
    const onLoad = () => img.removeEventListener("error", onError);
    async function onError() {
      img.removeEventListener("load", onLoad);
      if (img.src !== src) return;
      const form = new FormData();
      form.append("image", file, file.name || "pasted image");
      try {
        const response = await fetch("/api/preview", { method: "POST", body: form });
        if (!response.ok || img.src !== src) return;
        const url = URL.createObjectURL(await response.blob());
        previewUrls.push(url);
        img.src = url;
        img.hidden = false;
      } catch {
        // No preview then: the search itself says what is wrong with the photo.
      }
    }
    img.addEventListener("error", onError, { once: true });
    img.addEventListener("load", onLoad, { once: true });
  }

  function useFiles(list) {
    const files = Array.from(list || []);
    if (!files.length) return;
    const notImages = files.filter((file) => file.type && !file.type.startsWith("image/"));
    if (notImages.length) {
      setStatus("");
      showError(`“${notImages[0].name}” is not an image. Please choose a photo.`);
      return;
    }
    const images = files.map((file, n) => {
      const url = URL.createObjectURL(file);
      return { src: url, alt: `Your photo ${n + 1}: ${file.name || "pasted image"}` };
    });
    const names = files.map((file) => file.name || "pasted image").join(", ");
    const label = files.length === 1 ? names : `${files.length} photos of one organism, searched together: ${names}`;
    showPreviews(images, label);
    previewUrls = images.map((image) => image.src);
    [els.preview, ...els.previewMore.querySelectorAll("img")].forEach((img, n) => previewViaGateway(img, files[n]));
    els.textInput.value = "";
    runSearch({ kind: "image", files, queryId: null });
  }

  function imageFiles(items) {
    const files = [];
    for (const item of items || []) {
      const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
      if (file && file.type.startsWith("image/")) files.push(file);
    }
    return files;
  }

  // ---------- permalinks and copying ----------

  async function copyLink() {
    if (!lastResult || !lastResult.permalink) return;
    const url = new URL(lastResult.permalink, location.href).href;
    try {
      await navigator.clipboard.writeText(url);
      setStatus("Link copied. It reproduces this search (a photo search works while the server still holds the photo).");
    } catch {
      setStatus(`Copy this link: ${url}`);
    }
  }

  // Sets the controls from a permalink's parameters, and returns whether it names a query.
  function applyLink(params) {
    if (!params.has("q") && !params.has("text") && !params.has("record")) return false;
    const set = (input, key) => {
      if (params.has(key)) input.value = params.get(key);
    };
    // A link without top_n means the default, which is what the server will use too.
    els.topN.value = params.has("top_n") ? params.get("top_n") : String(DEFAULTS.top_n);
    set(els.nprobe, "nprobe");
    set(els.minSimilarity, "min_similarity");
    els.maxPerSpecies.value = params.get("max_per_species") || "";
    els.maxPerSource.value = params.get("max_per_source") || "";
    if (params.has("scope") && [...els.scope.options].some((o) => o.value === params.get("scope"))) set(els.scope, "scope");
    if (params.has("rank") && RANKS.includes(params.get("rank"))) set(els.rank, "rank");
    els.filters.value = params.getAll("filter").join(", ");
    passedThrough = {};
    for (const key of PASSED_THROUGH) {
      if (params.has(key)) passedThrough[key] = key === "predict" ? params.get(key) !== "false" : Number(params.get(key));
    }
    if (params.has("text")) els.textInput.value = params.get("text");
    if (params.has("record")) showPreviews([], `From record ${params.get("record")}.`);
    // A photo link: the gateway keeps a small copy of the photo while it holds the query.
    if (params.has("q")) {
      showPreviews([{ src: `${API}/queries/${encodeURIComponent(params.get("q"))}/preview`, alt: "The photo behind this link" }], "The photo behind this link.");
    }
    return true;
  }

  // ---------- phone: the hits first ----------

  // On a narrow screen the photo and the options fill the first screen: after a search, bring the
  // result bar (the query, its actions) and the first hits into view. The hits come before the
  // prediction and the tree there (style.css), so nothing else is between.
  function revealResults() {
    if (!window.matchMedia("(max-width: 800px)").matches) return;
    const bar = els.outcome.querySelector(".result-bar");
    if (bar) bar.scrollIntoView({ block: "start", behavior: "instant" });
  }

  // ---------- comparing a hit with the query ----------

  // The query's photo (the first one chosen, a record's thumbnail, or the server's preview of a
  // photo behind a link) beside the hit's image, the same size, as identifiers compare them.
  function compareFigures(hit, name) {
    const pair = el("div", "compare");
    const querySrc = !els.previews.hidden && !els.preview.hidden ? els.preview.getAttribute("src") : null;
    if (querySrc) {
      const mine = el("figure", "detail-figure compare-query");
      const img = el("img");
      img.alt = els.preview.alt || "The photo you searched with";
      img.src = querySrc;
      mine.append(img, el("figcaption", null, "Your query"));
      pair.append(mine);
    } else {
      pair.classList.add("single");
    }
    const theirs = el("figure", "detail-figure compare-hit");
    theirs.append(imageOrPlaceholder(hit.medium_url, name.text, false));
    const caption = el("figcaption", null, `Hit #${hit.rank}`);
    if ((hit.taxonomy || {}).common_name) caption.append(el("span", "common-name", hit.taxonomy.common_name));
    theirs.append(caption);
    pair.append(theirs);
    return pair;
  }

  function hitPosition(hit) {
    const hits = lastResult && Array.isArray(lastResult.hits) ? lastResult.hits : [];
    const at = hits.findIndex((h) => h.record_id === hit.record_id && h.rank === hit.rank);
    return el("p", "hit-position muted", at >= 0 ? `Hit ${at + 1} of ${hits.length} (← → for the previous and next)` : "");
  }

  // ← and → in the open detail move to the previous and next hit.
  function stepDetail(step) {
    const hits = lastResult && Array.isArray(lastResult.hits) ? lastResult.hits : [];
    const cards = [...els.results.querySelectorAll(".hit")];
    const at = cards.indexOf(detailOpener);
    const next = at + step;
    if (at < 0 || next < 0 || next >= hits.length || !cards[next]) return;
    openDetail(hits[next], cards[next]);
  }

  // ---------- taxon names from the collection ----------

  let suggesting = null;

  // Asks the gateway for names starting with `prefix` (at `rank`, or any); [] on any failure,
  // since a suggestion is a help, never a reason to show an error.
  async function fetchTaxa(prefix, rank, limit) {
    const params = new URLSearchParams({ prefix, limit: String(limit || 8) });
    if (rank) params.set("rank", rank);
    try {
      const response = await fetch(`${API}/taxa?${params}`);
      if (!response.ok) return { taxa: [], nearest: false };
      return await response.json();
    } catch {
      return { taxa: [], nearest: false };
    }
  }

  function taxonLabel(taxon) {
    const rank = taxon.rank === "common_name" ? "common name" : taxon.rank;
    return `${rank} · ${plural(taxon.count, "record")}`;
  }

  // Fills a <datalist> while the user types: the browser shows the options matching the text.
  function suggestWhileTyping(input, list, request) {
    let timer = null;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const wanted = request(input.value);
        if (!wanted) {
          list.replaceChildren();
          return;
        }
        const seq = (suggesting = Symbol("suggest"));
        const found = await fetchTaxa(wanted.prefix, wanted.rank, 8);
        if (seq !== suggesting) return; // a newer keystroke owns the list
        list.replaceChildren(...found.taxa.map((taxon) => suggestionOption(wanted.value(taxon), taxonLabel(taxon))));
      }, 120);
    });
  }

  function suggestionOption(value, label) {
    const o = el("option");
    o.value = value;
    o.label = label;
    return o;
  }

  function wireSuggestions() {
    // The name box: any rank; a suggestion is the name itself.
    suggestWhileTyping(els.textInput, els.textSuggestions, (text) => {
      const prefix = text.trim();
      return prefix.length >= 2 ? { prefix, rank: null, value: (taxon) => taxon.name } : null;
    });
    // The filter box: the part after the last comma, "rank:start" or just the start of a name.
    suggestWhileTyping(els.filters, els.filterSuggestions, (text) => {
      const cut = text.lastIndexOf(",");
      const head = cut >= 0 ? `${text.slice(0, cut + 1)} ` : "";
      const part = text.slice(cut + 1).trim();
      const colon = part.indexOf(":");
      const rank = colon > 0 ? part.slice(0, colon).trim().toLowerCase().replace(/\s+/g, "_") : null;
      const prefix = colon > 0 ? part.slice(colon + 1).trim() : part;
      if ((rank && !FILTER_RANKS.includes(rank)) || prefix.length < (rank ? 1 : 2)) return null;
      return { prefix, rank, value: (taxon) => `${head}${taxon.rank}:${taxon.name}` };
    });
  }

  // A node of the hits' tree is a button that keeps only that taxon (a filter added to the box).
  // A rank the hits do not know is a node of its own (name null): the ranks below it stay in the tree,
  // and it is no filter (no record is filtered by a missing name).
  function treeName(node) {
    return typeof node.name === "string" ? treeFilterButton(node) : el("span", "taxon-unknown soft", "unknown");
  }

  function treeFilterButton(node) {
    const button = el("button", "tree-filter");
    button.type = "button";
    button.title = `Only ${node.rank} ${node.name}`;
    button.append(taxonNode(node.name, node.rank));
    button.addEventListener("click", (event) => {
      addFilter(node.rank, node.name);
    });
    return button;
  }

  function addFilter(rank, name) {
    const filter = `${rank}:${name}`;
    const kept = els.filters.value
      .split(",")
      .map((part) => part.trim())
      .filter((part) => part && !part.toLowerCase().startsWith(`${rank}:`));
    els.filters.value = [...kept, filter].join(", ");
    if (current) runSearch(current);
  }

  // A search with taxon filters that found nothing: say which filter names nothing in the
  // collection, and offer the nearest names the collection has.
  async function explainEmptyFilters(result) {
    const params = result.parameters || {};
    const filters = Array.isArray(params.filters) ? params.filters : [];
    if (!filters.length || (Array.isArray(result.hits) && result.hits.length)) return;
    const seq = searchSeq;
    const notes = [];
    for (const filter of filters) {
      const found = await fetchTaxa(filter.value, filter.rank, 5);
      const exact = found.taxa.some((taxon) => taxon.name.toLowerCase() === String(filter.value).toLowerCase());
      if (!exact) notes.push({ filter, taxa: found.taxa });
    }
    if (seq !== searchSeq || !notes.length) return;
    const box = el("div", "no-match");
    for (const { filter, taxa } of notes) {
      const line = el("p", null, `No record in the collection has ${filter.rank} “${filter.value}”.`);
      if (taxa.length) {
        line.append(" Nearest names: ");
        taxa.forEach((taxon, n) => {
          const button = el("button", "link-button", taxon.name);
          button.type = "button";
          button.title = taxonLabel(taxon);
          button.addEventListener("click", () => replaceFilter(filter, taxon));
          line.append(button, n < taxa.length - 1 ? ", " : ".");
        });
      }
      box.append(line);
    }
    els.results.append(box);
  }

  function replaceFilter(old, taxon) {
    const kept = els.filters.value
      .split(",")
      .map((part) => part.trim())
      .filter((part) => part && part.toLowerCase() !== `${old.rank}:${old.value}`.toLowerCase());
    els.filters.value = [...kept, `${taxon.rank}:${taxon.name}`].join(", ");
    if (current) runSearch(current);
  }

  // ---------- examples, exports ----------

  // A few records of the collection to search from, for a first visit without a photo at hand.
  async function loadExamples() {
    let records = [];
    try {
      const response = await fetch(`${API}/examples`);
      if (response.ok) records = await response.json();
    } catch {
      return; // examples are a help: without them the page works as before
    }
    if (!Array.isArray(records) || !records.length) return;
    els.examplesList.replaceChildren(
      ...records.map((record) => {
        const name = bestName(record.taxonomy);
        const button = el("button", "example");
        button.type = "button";
        button.append(imageOrPlaceholder(record.thumbnail_url, "", true), el("span", "example-name", name.text));
        button.addEventListener("click", () => searchFromRecord(record));
        const li = el("li");
        li.append(button);
        return li;
      }),
    );
    els.examples.hidden = false;
  }

  // The export links fetch first, so a refusal (too many searches, a service down) is said on the
  // page instead of saving an error as the file or failing silently.
  async function downloadExport(event) {
    const link = event.currentTarget;
    const href = link.getAttribute("href");
    if (!href || href === "#") return;
    event.preventDefault();
    setStatus("Preparing the export…");
    try {
      const response = await fetch(href);
      if (!response.ok) {
        const problem = await readError(response);
        setStatus("");
        showError(`The export failed: ${problem.message}`);
        return;
      }
      const blob = await response.blob();
      const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
      const url = URL.createObjectURL(blob);
      const save = el("a");
      save.href = url;
      save.download = named ? named[1] : "bioclip-search";
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      clearError();
      setStatus(lastResult ? summary(lastResult) : "");
    } catch {
      setStatus("");
      showError("Could not reach the server. Check your connection and try again.");
    }
  }

  // ---------- the vocabulary ----------

  function option(value, text, selected) {
    const o = el("option", null, text);
    o.value = value;
    o.selected = selected;
    return o;
  }

  // A parameter's default and bounds from its JSON schema (a nullable one keeps them in anyOf).
  function schemaOf(parameters, name) {
    const p = parameters[name] || {};
    const typed = (p.anyOf || [p]).find((part) => part.type && part.type !== "null") || p;
    return { default: p.default, minimum: typed.minimum, maximum: typed.maximum };
  }

  function setBounds(input, schema) {
    if (schema.minimum !== undefined) input.min = String(schema.minimum);
    if (schema.maximum !== undefined) input.max = String(schema.maximum);
  }

  // Fetches the terms and builds the controls from them: scope and rank options, bounds, defaults.
  async function loadVocabulary() {
    const response = await fetch(`${API}/vocabulary`);
    if (!response.ok) throw new Error(`the vocabulary answered ${response.status}`);
    const vocabulary = await response.json();
    RANKS = vocabulary.ranks;
    FILTER_RANKS = vocabulary.filter_ranks;
    SCOPE_PHRASES = Object.fromEntries(vocabulary.scopes.map((scope) => [scope.name, scope.phrase]));
    const parameters = vocabulary.parameters;
    DEFAULTS = Object.fromEntries(Object.keys(parameters).map((name) => [name, parameters[name].default]));
    els.scope.replaceChildren(...vocabulary.scopes.map((scope) => option(scope.name, scope.label, scope.name === DEFAULTS.scope)));
    const capitalised = (rank) => rank.charAt(0).toUpperCase() + rank.slice(1);
    els.rank.replaceChildren(...RANKS.map((rank) => option(rank, capitalised(rank), rank === DEFAULTS.rank)));
    const topN = schemaOf(parameters, "top_n");
    setBounds(els.topN, topN);
    if (els.topN.value === "") els.topN.value = String(topN.default); // keep a number typed while loading
    setBounds(els.nprobe, schemaOf(parameters, "nprobe"));
    setBounds(els.minSimilarity, schemaOf(parameters, "min_similarity"));
    setBounds(els.maxPerSpecies, schemaOf(parameters, "max_per_species"));
    setBounds(els.maxPerSource, schemaOf(parameters, "max_per_source"));
    $("filter-ranks").textContent = FILTER_RANKS.join(", ");
  }

  // ---------- service info ----------

  // The search service measures its similarity scale after it starts: until then (or when it cannot),
  // /api/info has none, and a search asks again, at most every 10 seconds.
  let infoAskedAt = 0;
  const INFO_RETRY_MS = 10_000;

  async function loadInfo({ retry = false } = {}) {
    if (retry && Date.now() - infoAskedAt < INFO_RETRY_MS) return;
    infoAskedAt = Date.now();
    try {
      const response = await fetch(`${API}/info`);
      if (!response.ok) throw new Error(String(response.status));
      const info = await response.json();
      if (typeof info.notice === "string" && info.notice.trim()) {
        els.notice.textContent = info.notice;
        els.notice.hidden = false;
      }
      els.footer.textContent = infoLine(info);
      showSimilarityScale(info.index && info.index.similarity_scale);
    } catch {
      if (!retry) els.footer.textContent = "Service info unavailable.";
    }
  }

  // What is high for this model and collection, as the search service measured it on its own records;
  // nothing at all when it has not (no taxonomy, too few records): no number is made up here. The figures
  // are photo against photo: a search by name (a name's vector against photos') scores far lower, so the
  // note says so there instead of making every name search look like a miss.
  let similarityScale = null; // once measured: what /api/info said
  let searchKind = null;

  // Rounded down to the cards' 3 places: a bound never reads higher than measured (0.9996 is not "1.000").
  const floor3 = (v) => (Math.floor(v * 1000) / 1000).toFixed(3);

  function showSimilarityScale(scale) {
    const same = scale && scale.same_species;
    const unrelated = scale && scale.other_genera;
    const number = (v) => typeof v === "number" && Number.isFinite(v);
    if (!same || !unrelated || !number(same.p25) || !number(unrelated.median) || !number(scale.samples)) {
      els.similarityScale.hidden = true;
      els.similarityScale.textContent = "";
      return;
    }
    similarityScale = scale;
    const photos =
      `the nearest other photo of the same species typically scores above ${floor3(same.p25)} (3 in 4 do; ` +
      `median ${floor3(same.median)}); photos of other genera score around ${floor3(unrelated.median)}. ` +
      `Measured on ${plural(scale.samples, "record")} of the collection.`;
    els.similarityScale.textContent =
      searchKind === "text"
        ? ` This search is by name: a name against photos scores far lower than a photo against photos, so ` +
          `only the order of these hits counts. For this model and collection, photo against photo, ${photos}`
        : ` For this model and collection, ${photos}`;
    els.similarityScale.hidden = false;
  }

  function infoLine(info) {
    const parts = [];
    const model = info.model;
    if (model && (model.model || model.architecture)) {
      parts.push(`model ${model.model || model.architecture}${model.pretrained === false ? " (random weights)" : ""}`);
    } else {
      parts.push("model unavailable");
    }
    const index = info.index;
    const count = index ? (index.metadata_rows ?? index.vectors) : null;
    if (typeof count === "number") parts.push(`${count.toLocaleString()} records`);
    else parts.push("index unavailable");
    // A downloaded collection names its hub repo and pinned commit (the data folder's lock file).
    const pin = index && index.collection;
    if (pin && pin.repo && pin.commit) parts.push(`collection ${pin.repo} @ ${String(pin.commit).slice(0, 12)}`);
    return parts.join(" · ");
  }

  // ---------- wiring ----------

  function wire() {
    els.fileInput.addEventListener("change", () => {
      useFiles(els.fileInput.files);
      // Reset so choosing the same file again still fires "change".
      els.fileInput.value = "";
    });

    // Drag and drop: preventDefault on dragover is what makes the zone a drop target.
    let dragDepth = 0;
    els.dropZone.addEventListener("dragenter", (event) => {
      event.preventDefault();
      dragDepth += 1;
      els.dropZone.classList.add("dragging");
    });
    els.dropZone.addEventListener("dragover", (event) => {
      event.preventDefault();
      if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    });
    els.dropZone.addEventListener("dragleave", () => {
      // dragleave also fires when moving over child elements; count to know when we really left.
      dragDepth = Math.max(0, dragDepth - 1);
      if (dragDepth === 0) els.dropZone.classList.remove("dragging");
    });
    els.dropZone.addEventListener("drop", (event) => {
      event.preventDefault();
      dragDepth = 0;
      els.dropZone.classList.remove("dragging");
      const files = event.dataTransfer ? Array.from(event.dataTransfer.files) : [];
      const images = imageFiles(files);
      useFiles(images.length ? images : files); // the latter reports "not an image"
    });
    // A file dropped just outside the zone would otherwise make the browser navigate to it.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());

    // Paste: only take over when the clipboard holds an image, so pasting text still works.
    document.addEventListener("paste", (event) => {
      const items = event.clipboardData ? Array.from(event.clipboardData.items) : [];
      const files = imageFiles(items);
      if (!files.length) return;
      event.preventDefault();
      useFiles(files);
    });

    els.textForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = els.textInput.value.trim();
      if (!text) {
        showError("Type a scientific or common name to search.");
        els.textInput.focus();
        return;
      }
      // The preview belongs to photo searches; hide it so it doesn't suggest otherwise.
      showPreviews([], "");
      runSearch({ kind: "text", text, queryId: null });
    });

    // "change" (not "input") so typing a number runs one search, not one per keystroke.
    // A re-run sends the query's id, so the photo is neither uploaded nor embedded again.
    for (const control of optionControls) {
      control.addEventListener("change", () => {
        if (!current) return;
        if (sent && sent.query === current && sent.controls === controlValues()) return;
        runSearch(current);
      });
    }
    // Enter in the filter box applies it even when the text has not changed (e.g. after an error).
    els.filters.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        if (current) runSearch(current);
      }
    });

    els.copyLink.addEventListener("click", copyLink);
    // A record's thumbnail used as the preview may be unavailable: show the label alone then.
    els.preview.addEventListener("error", () => {
      if (els.preview.getAttribute("src")) els.preview.hidden = true;
    });

    els.detailClose.addEventListener("click", closeDetail);
    // Clicking the backdrop (outside the panel's box) closes it too.
    els.detail.addEventListener("click", (event) => {
      if (event.target !== els.detail) return;
      const box = els.detail.getBoundingClientRect();
      const inside = event.clientX >= box.left && event.clientX <= box.right && event.clientY >= box.top && event.clientY <= box.bottom;
      if (!inside) closeDetail();
    });
    document.addEventListener("keydown", (event) => {
      // Escape closes a modal <dialog> natively; this covers browsers without it.
      if (event.key === "Escape" && els.detail.hasAttribute("open")) closeDetail();
      // "/" jumps to the name search, as on many search pages, unless the user is typing.
      const typing = event.target instanceof HTMLElement && event.target.closest("input, textarea, select, [contenteditable]");
      if (event.key === "/" && !typing && !els.detail.hasAttribute("open") && !event.ctrlKey && !event.metaKey && !event.altKey) {
        event.preventDefault();
        els.textInput.focus();
      }
    });
    els.detail.addEventListener("close", restoreFocus);
    els.detail.addEventListener("keydown", (event) => {
      if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
        event.preventDefault();
        stepDetail(event.key === "ArrowRight" ? 1 : -1);
      }
    });
    wireSuggestions();
    els.exportCsv.addEventListener("click", downloadExport);
    els.exportJson.addEventListener("click", downloadExport);
  }

  // Settled once the controls are built from the vocabulary; a search waits for it.
  let vocabularyReady = null;

  async function start() {
    vocabularyReady = loadVocabulary();
    wire();
    // On a phone the tree would push the hits far down: it starts closed there.
    if (window.matchMedia("(max-width: 800px)").matches) $("tree").open = false;
    loadInfo();
    loadExamples();
    try {
      await vocabularyReady;
    } catch (err) {
      showError(`The page could not load its settings from the server (${err.message}). Reload to try again.`);
      return;
    }
    document.body.dataset.ready = "true";
    const linked = new URLSearchParams(location.search);
    if (applyLink(linked)) runLink(linked);
  }

  start();
})();
