// BioCLIP image search: the page's behaviour.
// Everything that comes from the server is inserted with textContent or as
// attributes set through the DOM, never as HTML, so names can't inject markup.
"use strict";

(() => {
  const API = "/api";

  const SCOPE_PHRASES = {
    all: "all records",
    url_only: "records with an image URL",
    inaturalist: "iNaturalist records",
    bioclip2_training: "BioCLIP-2 training records",
  };

  // Taxonomy rows of the detail table, from broad to specific.
  const RANKS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"];

  const $ = (id) => document.getElementById(id);
  const els = {
    notice: $("notice"),
    dropZone: $("drop-zone"),
    fileInput: $("file-input"),
    preview: $("preview"),
    textForm: $("text-form"),
    textInput: $("text-input"),
    scope: $("scope"),
    topN: $("top-n"),
    nprobe: $("nprobe"),
    status: $("status"),
    error: $("error"),
    results: $("results"),
    detail: $("detail"),
    detailTitle: $("detail-title"),
    detailBody: $("detail-body"),
    detailClose: $("detail-close"),
    footer: $("footer-status"),
  };

  // What the controls re-run: {kind: "image", file} or {kind: "text", text}.
  let lastQuery = null;
  // Only the newest search may touch the page; older ones are aborted.
  let inFlight = null;
  let searchSeq = 0;
  // The preview's object URL, revoked when replaced so files don't pile up in memory.
  let previewUrl = null;
  // The card that opened the detail panel, to give focus back to it on close.
  let detailOpener = null;

  // ---------- small DOM helpers ----------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // A span (valid inside a <button>) standing in for an image that can't be shown.
  function placeholder() {
    const node = el("span", "placeholder", "image unavailable");
    node.setAttribute("role", "img");
    node.setAttribute("aria-label", "image unavailable");
    return node;
  }

  // An <img> that swaps itself for the placeholder if the server can't deliver it
  // (the image endpoint answers errors as JSON, which fails to decode).
  function imageOrPlaceholder(src, alt, lazy) {
    if (!src) return placeholder();
    const img = el("img");
    if (lazy) img.loading = "lazy";
    img.decoding = "async";
    img.alt = alt;
    img.addEventListener("error", () => img.replaceWith(placeholder()), { once: true });
    img.src = src;
    return img;
  }

  // ---------- taxonomy formatting ----------

  // The most specific name known, and whether it is italicised by convention
  // (genus and below are; family and above are not).
  function bestName(taxonomy) {
    const t = taxonomy || {};
    if (t.scientific_name) return { text: t.scientific_name, italic: true };
    if (t.genus && t.species) return { text: `${t.genus} ${t.species}`, italic: true };
    if (t.genus) return { text: `${t.genus} sp.`, italic: true };
    for (const rank of ["family", "order", "class", "phylum", "kingdom"]) {
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

  function formatSimilarity(value) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(3) : "–";
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

  // Turns a failed response into one readable sentence. The API answers
  // {"error": {"code", "message"}}, but a proxy in between may answer HTML.
  async function errorMessage(response) {
    let message = "";
    try {
      const body = await response.json();
      if (body && body.error && typeof body.error.message === "string") message = body.error.message;
      else if (body && typeof body.detail === "string") message = body.detail;
    } catch {
      // Not JSON: fall through to a message built from the status.
    }
    if (message) return message;
    const generic = {
      413: "The file is too large.",
      415: "That file type is not supported; please choose an image.",
      422: "The request was not valid (is the file an image, and are the options in range?).",
      503: "A service is unavailable right now; please try again later.",
      504: "The search timed out; please try again.",
    };
    return generic[response.status] || `The server answered ${response.status} ${response.statusText}`.trim() + ".";
  }

  // ---------- the search itself ----------

  // Reads the option controls; returns null (and says why) when one is out of range,
  // so a bad value is reported here rather than as a 422 from the server.
  function readOptions() {
    for (const input of [els.topN, els.nprobe]) {
      if (!input.checkValidity()) {
        const label = input === els.topN ? "Results must be a whole number from 1 to 200." : "nprobe must be a whole number of at least 1, or blank.";
        showError(label);
        return null;
      }
    }
    const topN = els.topN.value.trim() === "" ? 24 : Number(els.topN.value);
    const nprobe = els.nprobe.value.trim() === "" ? null : Number(els.nprobe.value);
    return { top_n: topN, nprobe, scope: els.scope.value };
  }

  function buildRequest(query, options) {
    if (query.kind === "image") {
      const form = new FormData();
      form.append("image", query.file, query.file.name || "pasted-image");
      form.append("top_n", String(options.top_n));
      if (options.nprobe !== null) form.append("nprobe", String(options.nprobe));
      form.append("scope", options.scope);
      // No Content-Type header: the browser adds the multipart boundary itself.
      return { method: "POST", body: form };
    }
    return {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: query.text, ...options }),
    };
  }

  async function runSearch(query) {
    // Remember the query even if an option is invalid, so fixing the option re-runs it.
    lastQuery = query;
    const options = readOptions();
    if (!options) return;

    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const seq = ++searchSeq;

    clearError();
    setStatus("Searching…");
    els.results.setAttribute("aria-busy", "true");

    try {
      const response = await fetch(`${API}/search`, { ...buildRequest(query, options), signal: controller.signal });
      if (!response.ok) {
        const message = await errorMessage(response);
        if (seq !== searchSeq) return;
        setStatus("");
        showError(message);
        return;
      }
      const result = await response.json();
      if (seq !== searchSeq) return;
      renderResults(result);
      setStatus(summary(result));
    } catch (err) {
      // An aborted search was replaced by a newer one, which owns the page now.
      if (err && err.name === "AbortError") return;
      if (seq !== searchSeq) return;
      setStatus("");
      showError("Could not reach the server. Check your connection and try again.");
    } finally {
      if (seq === searchSeq) {
        els.results.removeAttribute("aria-busy");
        inFlight = null;
      }
    }
  }

  function summary(result) {
    const hits = Array.isArray(result.hits) ? result.hits.length : 0;
    const ms = typeof result.took_ms === "number" ? Math.round(result.took_ms) : null;
    let text = `${hits} ${hits === 1 ? "hit" : "hits"}${ms !== null ? ` in ${ms} ms` : ""}`;
    if (result.exhausted) {
      const scope = SCOPE_PHRASES[result.scope] || result.scope;
      text += ` — fewer than ${result.top_n} records matched the scope (${scope}).`;
    }
    return text;
  }

  // ---------- results ----------

  function renderResults(result) {
    const hits = Array.isArray(result.hits) ? result.hits : [];
    const cards = hits.map(hitCard);
    els.results.replaceChildren(...cards);
    if (!cards.length) els.results.append(el("p", "empty", "No records matched."));
  }

  function hitCard(hit) {
    const taxonomy = hit.taxonomy || {};
    const card = el("button", "hit");
    card.type = "button";
    card.dataset.recordId = String(hit.record_id);

    const name = bestName(taxonomy);
    const label = [`Rank ${hit.rank}`, name.text, taxonomy.common_name, `similarity ${formatSimilarity(hit.similarity)}`]
      .filter(Boolean)
      .join(", ");
    card.setAttribute("aria-label", `${label}. Show details.`);

    const figure = el("span", "thumb");
    figure.append(imageOrPlaceholder(hit.thumbnail_url, name.text, true));
    figure.append(el("span", "rank", `#${hit.rank}`));

    const text = el("span", "hit-text");
    text.append(nameNode(taxonomy, "sci-name"));
    if (taxonomy.common_name) text.append(el("span", "common-name", taxonomy.common_name));
    const similarity = el("span", "similarity", formatSimilarity(hit.similarity));
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

    const body = [];
    const figure = el("figure", "detail-figure");
    figure.append(imageOrPlaceholder(hit.medium_url, name.text, false));
    if (taxonomy.common_name) figure.append(el("figcaption", "common-name", taxonomy.common_name));
    body.push(figure);

    const info = el("div", "detail-info");
    info.append(taxonomyTable(taxonomy), sourceList(hit));
    const links = linkList(hit);
    if (links) info.append(links);
    body.push(info);

    els.detailBody.replaceChildren(...body);

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
    ];
    for (const [term, value] of rows) {
      if (value === null || value === undefined || value === "") continue;
      dl.append(el("dt", null, term), el("dd", null, value));
    }
    return dl;
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

  // ---------- choosing a photo ----------

  function useFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      clearError();
      showError(`“${file.name}” is not an image. Please choose a photo.`);
      return;
    }
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    els.preview.src = previewUrl;
    els.preview.hidden = false;
    els.dropZone.classList.add("has-preview");
    runSearch({ kind: "image", file });
  }

  function firstImageFile(items) {
    for (const item of items || []) {
      const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
      if (file && file.type.startsWith("image/")) return file;
    }
    return null;
  }

  // ---------- service info ----------

  async function loadInfo() {
    try {
      const response = await fetch(`${API}/info`);
      if (!response.ok) throw new Error(String(response.status));
      const info = await response.json();
      if (typeof info.notice === "string" && info.notice.trim()) {
        els.notice.textContent = info.notice;
        els.notice.hidden = false;
      }
      els.footer.textContent = infoLine(info);
    } catch {
      els.footer.textContent = "Service info unavailable.";
    }
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
    return parts.join(" · ");
  }

  // ---------- wiring ----------

  function wire() {
    els.fileInput.addEventListener("change", () => {
      useFile(els.fileInput.files && els.fileInput.files[0]);
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
      const file = firstImageFile(files);
      if (file) useFile(file);
      else if (files.length) useFile(files[0]); // reports "not an image"
    });
    // A file dropped just outside the zone would otherwise make the browser navigate to it.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());

    // Paste: only take over when the clipboard holds an image, so pasting text still works.
    document.addEventListener("paste", (event) => {
      const items = event.clipboardData ? Array.from(event.clipboardData.items) : [];
      const file = firstImageFile(items);
      if (!file) return;
      event.preventDefault();
      useFile(file);
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
      els.preview.hidden = true;
      els.dropZone.classList.remove("has-preview");
      runSearch({ kind: "text", text });
    });

    // "change" (not "input") so typing a number runs one search, not one per keystroke.
    for (const control of [els.scope, els.topN, els.nprobe]) {
      control.addEventListener("change", () => {
        if (lastQuery) runSearch(lastQuery);
      });
    }

    els.detailClose.addEventListener("click", closeDetail);
    // Clicking the backdrop (outside the panel's box) closes it too.
    els.detail.addEventListener("click", (event) => {
      if (event.target !== els.detail) return;
      const box = els.detail.getBoundingClientRect();
      const inside = event.clientX >= box.left && event.clientX <= box.right && event.clientY >= box.top && event.clientY <= box.bottom;
      if (!inside) closeDetail();
    });
    // Escape closes a modal <dialog> natively; this covers browsers without it.
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && els.detail.hasAttribute("open")) closeDetail();
    });
    els.detail.addEventListener("close", restoreFocus);
  }

  wire();
  loadInfo();
})();
