// The mmembed search page: plain JavaScript, no build step. Talks to the JSON API of the same origin.
"use strict";

const API = "/api/v1";
const THUMBNAIL_SIDE = 256;
const $ = (id) => document.getElementById(id);
const objectUrls = [];
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"];
// The last search, so that "More results" asks for the next page of the same query.
let lastSearch = null;

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

// fetch() that turns an error answer into an Error carrying the service's message and status.
async function request(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && body.detail) detail = body.detail;
    } catch (_) { /* not JSON: keep the status line */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// Every error: its message, and no results left on screen that it would seem to describe.
function showError(text) {
  clearResults();
  updateMore(null);
  setStatus(text, true);
}

// --- index information, tasks and the rerank toggle ---------------------------------------------

async function loadInfo() {
  try {
    const info = await (await request(`${API}/info`)).json();
    const encoder = info.encoder || info.encoder_id;
    if (info.has_index === false) {
      $("index-info").textContent = `This service serves the model ${encoder} without an index: search needs ` +
        "one (start it with mmembed serve --model NAME INDEX). Embeddings are at /v1/embeddings.";
      $("search-button").disabled = true;
      $("search-button").dataset.noIndex = "true";
      return;
    }
    $("index-info").textContent =
      `${info.count.toLocaleString()} candidates · ${info.dim}-dimensional embeddings · encoder ${encoder}`;
    fillTasks(info.tasks);
    setupRerank(info.reranker);
    $("k").max = String(info.limits.max_k);
    $("more-results").dataset.maxDepth = String(info.limits.max_depth);
  } catch (error) {
    if (error.status === 401) {
      $("index-info").textContent = "This service needs an API key: enter it under “API key”.";
      $("api-key-box").open = true;
    } else {
      $("index-info").textContent = `Cannot load the index information: ${error.message}`;
    }
  }
}

function fillTasks(tasks) {
  const select = $("task");
  const chosen = select.value;
  select.replaceChildren(new Option("No task instruction", ""));
  for (const task of tasks) {
    const option = new Option(task.name, task.name);
    option.title = task.instruction;
    option.dataset.instruction = task.instruction;
    select.add(option);
  }
  select.value = tasks.some((t) => t.name === chosen) ? chosen : "";
  describeTask();
}

function describeTask() {
  const option = $("task").selectedOptions[0];
  const instruction = option && option.dataset.instruction;
  $("task-help").textContent = instruction
    ? `Instruction: ${instruction}`
    : "The task's instruction tells the encoder what is wanted.";
  $("instruction").disabled = Boolean(instruction);
}

function setupRerank(reranker) {
  const box = $("rerank");
  box.disabled = !reranker;
  if (!reranker) box.checked = false;
  $("rerank-note").textContent = reranker
    ? `Reranker: ${reranker}.`
    : "No reranker is attached (start the service with --rerank CONFIG.yaml to enable this).";
}

// --- the query image ----------------------------------------------------------------------------

function chosenImage() {
  const files = $("query-image").files;
  return files && files.length ? files[0] : null;
}

// A file that is not an image of an accepted type is refused here, with a message, instead of a
// broken preview and a 415 later.
function refuseNonImage(file) {
  if (!file || IMAGE_TYPES.includes(file.type)) return false;
  const what = file.type ? `a ${file.type} file` : "not an image";
  showError(`“${file.name}” is ${what}; choose a PNG, JPEG, WebP, GIF or BMP image.`);
  $("query-image").value = "";
  return true;
}

function showPreview() {
  const preview = $("image-preview");
  let file = chosenImage();
  if (refuseNonImage(file)) file = null;
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (!file) {
    preview.removeAttribute("src");
    preview.hidden = true;
    $("clear-image").hidden = true;
    return;
  }
  preview.onerror = () => {
    showError(`“${file.name}” cannot be shown as an image; it may be corrupt.`);
    preview.hidden = true;
  };
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("clear-image").hidden = false;
}

function setupImageInput() {
  const zone = $("drop-zone");
  const input = $("query-image");
  input.addEventListener("change", showPreview);
  $("clear-image").addEventListener("click", () => {
    input.value = "";
    showPreview();
    input.focus();
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      showPreview();
    }
  });
}

// --- searching and showing results --------------------------------------------------------------

function searchForm() {
  const form = new FormData();
  const text = $("query-text").value.trim();
  const image = chosenImage();
  if (text) form.append("text", text);
  if (image) form.append("image", image, image.name || "query-image");
  const task = $("task").value;
  const instruction = $("instruction").value.trim();
  if (task) form.append("task", task);
  else if (instruction) form.append("instruction", instruction);
  form.append("k", $("k").value || "10");
  const modality = $("modality").value;
  if (modality) form.append("modality", modality);
  if (!$("rerank").disabled) form.append("rerank", $("rerank").checked ? "true" : "false");
  return { form, empty: !text && !image };
}

async function search(event) {
  event.preventDefault();
  const { form, empty } = searchForm();
  if (empty) {
    showError("Type a query, choose an image, or both.");
    $("query-text").focus();
    return;
  }
  lastSearch = form;
  await runSearch(form, 0);
}

// One page of results: offset 0 replaces the list, a later page is appended to it.
async function runSearch(form, offset) {
  const page = new FormData();
  for (const [name, value] of form.entries()) page.append(name, value);
  page.append("offset", String(offset));
  const button = $("search-button");
  button.disabled = true;
  $("results").setAttribute("aria-busy", "true");
  setStatus("Searching…");
  const started = performance.now();
  try {
    const answer = await (await request(`${API}/search`, { method: "POST", body: page })).json();
    showResults(answer.hits, offset > 0);
    setStatus(describeTimings(answer, performance.now() - started));
    updateMore(answer);
  } catch (error) {
    showError(`Search failed: ${error.message}`);
  } finally {
    button.disabled = button.dataset.noIndex === "true";
    $("results").removeAttribute("aria-busy");
  }
}

function ms(value) {
  return `${value < 10 ? value.toFixed(1) : value.toFixed(0)} ms`;
}

function describeTimings(answer, roundTripMs) {
  const t = answer.timings_ms;
  const parts = [`encode ${ms(t.encode)}`, `search ${ms(t.search)}`];
  if (t.rerank !== null && t.rerank !== undefined) parts.push(`rerank ${ms(t.rerank)}`);
  const count = answer.hits.length;
  const first = answer.offset + 1;
  const range = count ? `results ${first}–${answer.offset + count}` : "no results";
  const what = `${range}${answer.reranked ? ", reranked" : ""}`;
  const query = `Query: ${answer.query_modality.replace(",", " + ")}`;
  const instruction = answer.instruction ? `instruction “${answer.instruction}”` : "no instruction";
  return `${what} in ${ms(roundTripMs)} (server ${ms(t.total)}: ${parts.join(", ")}). ${query}; ${instruction}.`;
}

// "More results" pages through the same query while the service allows deeper results.
function updateMore(answer) {
  const button = $("more-results");
  const maxDepth = Number(button.dataset.maxDepth || "1000");
  const next = answer ? answer.offset + answer.k : 0;
  button.hidden = !answer || answer.hits.length < answer.k || next >= maxDepth;
  button.dataset.offset = String(next);
}

function moreResults() {
  if (lastSearch) runSearch(lastSearch, Number($("more-results").dataset.offset));
}

function clearResults() {
  while (objectUrls.length) URL.revokeObjectURL(objectUrls.pop());
  $("results").replaceChildren();
}

function showResults(hits, append = false) {
  if (!append) clearResults();
  const list = $("results");
  for (const hit of hits) list.append(resultCard(hit));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function resultCard(hit) {
  const card = element("li", "card");
  if (hit.has_image && hit.image_url) card.append(thumbnail(hit));
  const meta = element("div", "meta");
  meta.append(element("span", "rank", `#${hit.rank}`));
  const badge = element("span", `badge badge-${hit.modality.replace(",", "-")}`, hit.modality.replace(",", " + "));
  badge.title = "modality of the candidate";
  meta.append(badge);
  meta.append(element("span", "score", `score ${hit.score.toFixed(3)}`));
  card.append(meta);
  if (hit.rerank_score !== null && hit.rerank_score !== undefined) {
    const retrieval = hit.retrieval_score === null ? "–" : hit.retrieval_score.toFixed(3);
    card.append(element("p", "scores", `rerank ${hit.rerank_score.toFixed(3)} · retrieval ${retrieval}`));
  }
  if (hit.text) card.append(element("p", "text", hit.text));
  card.append(element("p", "id", hit.id));
  return card;
}

function thumbnail(hit) {
  const img = element("img", "thumb");
  img.alt = hit.text ? `Image of candidate ${hit.id}: ${hit.text}` : `Image of candidate ${hit.id}`;
  img.width = 160;
  img.height = 160;
  // Fetched (not an <img src>) so that the API key header goes with it.
  request(`${hit.image_url}?size=${THUMBNAIL_SIDE}`)
    .then((response) => response.blob())
    .then((blob) => {
      const url = URL.createObjectURL(blob);
      objectUrls.push(url);
      img.src = url;
    })
    .catch((error) => {
      img.alt = `Image of candidate ${hit.id} unavailable: ${error.message}`;
      img.classList.add("missing");
    });
  return img;
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", search);
  $("more-results").addEventListener("click", moreResults);
  $("task").addEventListener("change", describeTask);
  $("api-key").addEventListener("change", loadInfo);
  setupImageInput();
  loadInfo();
});
