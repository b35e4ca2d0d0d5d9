// The API page: lists the routes of /openapi.json with their summaries and parameters. Served by the
// service itself (no CDN), so it works on a machine without internet access.
"use strict";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function schemaName(ref) {
  return ref ? ref.split("/").pop() : "";
}

function requestBody(operation) {
  const content = (operation.requestBody && operation.requestBody.content) || {};
  return Object.entries(content).map(([type, body]) => `${type} ${schemaName(body.schema && body.schema.$ref)}`);
}

function routeCard(path, method, operation) {
  const card = el("section", "card route");
  card.append(el("h2", "route-title", `${method.toUpperCase()} ${path}`));
  if (operation.summary) card.append(el("p", "text", operation.summary));
  const params = (operation.parameters || []).map((p) => `${p.name} (${p.in}${p.required ? ", required" : ""})`);
  if (params.length) card.append(el("p", "hint", `Parameters: ${params.join(", ")}`));
  const bodies = requestBody(operation);
  if (bodies.length) card.append(el("p", "hint", `Body: ${bodies.join("; ")}`));
  const codes = Object.keys(operation.responses || {});
  if (codes.length) card.append(el("p", "hint", `Answers: ${codes.join(", ")}`));
  return card;
}

async function showRoutes() {
  const status = document.getElementById("docs-status");
  try {
    const response = await fetch("/openapi.json");
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const spec = await response.json();
    const list = document.getElementById("routes");
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, operation] of Object.entries(methods)) list.append(routeCard(path, method, operation));
    }
    status.textContent = `${spec.info.title} ${spec.info.version}: ${list.children.length} routes.`;
  } catch (error) {
    status.textContent = `Cannot read /openapi.json: ${error.message}`;
  }
}

document.addEventListener("DOMContentLoaded", showRoutes);
