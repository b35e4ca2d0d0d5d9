// The API page: lists the routes of /openapi.json with their summaries, parameters, and the fields of
// their request and response schemas. Served by the service itself (no CDN), so it works offline.
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

// A field's type in words: "string", "array of OpenAIInputItem", "string | null", ...
function typeName(schema) {
  if (!schema) return "any";
  if (schema.$ref) return schemaName(schema.$ref);
  if (schema.anyOf) return schema.anyOf.map(typeName).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.type === "array") return `array of ${typeName(schema.items)}`;
  if (schema.type === "object" && schema.additionalProperties) return `map of ${typeName(schema.additionalProperties)}`;
  return schema.type || "any";
}

// The fields of a named schema as a table, and (once each) the schemas its fields refer to.
function schemaTables(spec, name, shown) {
  const schema = (spec.components && spec.components.schemas || {})[name];
  if (!schema || shown.has(name)) return [];
  shown.add(name);
  const box = el("details", "schema");
  box.append(el("summary", "", name + (schema.description ? ` — ${schema.description.split("\n")[0]}` : "")));
  const table = el("table");
  const head = el("tr");
  for (const title of ["field", "type", "required", "default", "description"]) head.append(el("th", "", title));
  table.append(head);
  const required = new Set(schema.required || []);
  const refs = [];
  for (const [field, property] of Object.entries(schema.properties || {})) {
    const row = el("tr");
    row.append(el("td", "", field), el("td", "", typeName(property)), el("td", "", required.has(field) ? "yes" : ""),
               el("td", "", property.default === undefined ? "" : JSON.stringify(property.default)),
               el("td", "", property.description || ""));
    table.append(row);
    JSON.stringify(property).replace(/#\/components\/schemas\/(\w+)/g, (_, ref) => refs.push(ref));
  }
  box.append(table);
  return [box, ...refs.flatMap((ref) => schemaTables(spec, ref, shown))];
}

function bodySchemas(spec, operation) {
  const names = [];
  const content = (operation.requestBody && operation.requestBody.content) || {};
  for (const body of Object.values(content)) names.push(schemaName(body.schema && body.schema.$ref));
  const ok = (operation.responses || {})["200"];
  for (const body of Object.values((ok && ok.content) || {})) {
    const schema = body.schema || {};
    names.push(schemaName(schema.$ref || (schema.items && schema.items.$ref)));
  }
  const shown = new Set();
  return names.filter(Boolean).flatMap((name) => schemaTables(spec, name, shown));
}

function routeCard(spec, path, method, operation) {
  const card = el("section", "card route");
  card.append(el("h2", "route-title", `${method.toUpperCase()} ${path}`));
  if (operation.summary) card.append(el("p", "text", operation.summary));
  const params = (operation.parameters || []).map((p) => `${p.name} (${p.in}${p.required ? ", required" : ""})`);
  if (params.length) card.append(el("p", "hint", `Parameters: ${params.join(", ")}`));
  const bodies = requestBody(operation);
  if (bodies.length) card.append(el("p", "hint", `Body: ${bodies.join("; ")}`));
  const codes = Object.keys(operation.responses || {});
  if (codes.length) card.append(el("p", "hint", `Answers: ${codes.join(", ")}`));
  card.append(...bodySchemas(spec, operation));
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
      for (const [method, operation] of Object.entries(methods)) list.append(routeCard(spec, path, method, operation));
    }
    status.textContent = `${spec.info.title} ${spec.info.version}: ${list.children.length} routes.`;
  } catch (error) {
    status.textContent = `Cannot read /openapi.json: ${error.message}`;
  }
}

document.addEventListener("DOMContentLoaded", showRoutes);
