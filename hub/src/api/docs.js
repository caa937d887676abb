// The API docs page (/api/docs): renders the hub's own OpenAPI document; nothing is fetched
// from anywhere else. A file of its own so that the page needs no inline script.
const esc = (s) => String(s ?? '').replace(/[&<>"]/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const refName = (schema) => schema && schema.$ref ? schema.$ref.split('/').pop() : null;
function schemaText(schema, schemas, depth = 0) {
  if (!schema) return '';
  const name = refName(schema);
  if (name) return depth > 1 ? name : name + ' ' + schemaText(schemas[name], schemas, depth + 1);
  if (schema.type === 'array' || (Array.isArray(schema.type) && schema.type.includes('array'))) return '[' + schemaText(schema.items, schemas, depth) + ']';
  if (schema.properties) {
    const lines = Object.entries(schema.properties).map(([k, v]) => '  '.repeat(depth + 1) + k + ': ' + (refName(v) || v.type || '') + (v.description ? '  // ' + v.description : ''));
    return '{\n' + lines.join('\n') + '\n' + '  '.repeat(depth) + '}';
  }
  return schema.type ? String(schema.type) : '';
}
fetch('/api/v1/openapi.json').then((r) => r.json()).then((doc) => {
  const schemas = (doc.components && doc.components.schemas) || {};
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || 'other';
      (byTag[tag] = byTag[tag] || []).push({ path, method, op });
    }
  }
  let html = '<p>' + esc(doc.info.description) + '</p>';
  for (const [tag, ops] of Object.entries(byTag)) {
    html += '<h2>' + esc(tag) + '</h2>';
    for (const { path, method, op } of ops) {
      html += '<details><summary><span class="method ' + method + '">' + method.toUpperCase() + '</span><code>' + esc(path) + '</code><span>' + esc(op.summary || '') + '</span></summary><div class="body">';
      if (op.description) html += '<p>' + esc(op.description) + '</p>';
      if (op.parameters && op.parameters.length) {
        html += '<table><tr><th>parameter</th><th>in</th><th>description</th></tr>';
        for (const p of op.parameters) html += '<tr><td><code>' + esc(p.name) + '</code></td><td>' + esc(p.in) + '</td><td>' + esc(p.description) + '</td></tr>';
        html += '</table>';
      }
      if (op.requestBody) {
        const content = Object.values(op.requestBody.content || {})[0] || {};
        html += '<p><strong>Body</strong> ' + esc(op.requestBody.description || '') + '</p><pre>' + esc(schemaText(content.schema, schemas)) + '</pre>';
      }
      html += '<table><tr><th>status</th><th>description</th></tr>';
      for (const [status, resp] of Object.entries(op.responses || {})) html += '<tr><td>' + esc(status) + '</td><td>' + esc(resp.description) + '</td></tr>';
      html += '</table></div></details>';
    }
  }
  document.getElementById('main').innerHTML = html;
});
