// Validates an OpenAPI document against the official schema of its version, with a validator
// written independently of the hub (its Rust generator could share a misunderstanding with a
// Rust check). Usage: node check.mjs openapi.json
import { readFileSync } from "node:fs";
import { Validator } from "@seriousme/openapi-schema-validator";

async function check(spec) {
  const validator = new Validator();
  const result = await validator.validate(spec);
  if (!result.valid) return { valid: false, errors: result.errors };
  // Every $ref must resolve (resolveRefs throws on a dangling one).
  validator.resolveRefs();
  return { valid: true, version: validator.version };
}

const path = process.argv[2];
if (!path) {
  console.error("usage: node check.mjs openapi.json");
  process.exit(2);
}
const spec = JSON.parse(readFileSync(path, "utf8"));

// The validator must be able to fail: a copy with a broken response must be rejected.
const broken = structuredClone(spec);
const firstPath = Object.values(broken.paths)[0];
Object.values(firstPath)[0].responses = { "200": { content: "not an object" } };
const refused = await check(broken);
if (refused.valid) {
  console.error("self-check failed: a broken document was accepted");
  process.exit(1);
}

const result = await check(spec);
if (!result.valid) {
  console.error(JSON.stringify(result.errors, null, 2));
  console.error(`openapi: ${path} does NOT match the OpenAPI schema`);
  process.exit(1);
}
const operations = Object.values(spec.paths).reduce((n, item) => n + Object.keys(item).length, 0);
console.log(`openapi: valid OpenAPI ${result.version} document, ${Object.keys(spec.paths).length} paths, ${operations} operations`);
