#!/usr/bin/env node
// Decode captured Sparkplug B payloads (NNNN.bin) with Eclipse Tahu's JS codec
// (npm `sparkplug-payload`) and compare each to the expectation our Rust code
// wrote beside it (NNNN.json).
//
// Usage: node check.js DIR
// Exit: 0 all passed (and at least one), 1 any failure, 2 DIR missing/empty.
'use strict';

const fs = require('fs');
const path = require('path');
const sparkplug = require('sparkplug-payload').get('spBv1.0');
// The package's generated protobufjs classes; only needed to patch in a
// datatype that the wire legitimately omits (see decode() below).
const ProtoPayload =
  require('sparkplug-payload/lib/sparkplugPayloadProto').org.eclipse.tahu.protobuf.Payload;

const FLOAT = 9;
const FLOAT_REL_TOL = 1e-6;
// Tahu's decodePayload reports the datatype as a name; map it back to the number.
const TYPE_NUMBERS = {
  Int8: 1, Int16: 2, Int32: 3, Int64: 4, UInt8: 5, UInt16: 6, UInt32: 7, UInt64: 8,
  Float: 9, Double: 10, Boolean: 11, String: 12, DateTime: 13, Text: 14, UUID: 15,
  DataSet: 16, Bytes: 17, File: 18, Template: 19, PropertySet: 20, PropertySetList: 21,
};
const SCALAR_TYPES = new Set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);

// protobufjs returns every uint64 field (seq, timestamp, alias, and Int64/UInt64/
// DateTime values) as a Long {low, high, unsigned} (a plain {low, high} object if
// `long` were unavailable). Convert those to an exact BigInt.
function isLongLike(v) {
  return v !== null && typeof v === 'object' && typeof v.low === 'number' && typeof v.high === 'number';
}
function longToBigInt(v) {
  const u = (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
  return v.unsigned === false ? BigInt.asIntN(64, u) : u;
}

// Exact integer comparison of a decoded value (Long or number) with a JSON number.
// JSON numbers above 2^53 are already rounded by JSON.parse, so those are compared
// as doubles; anything up to 2^53 is exact.
function intEquals(decoded, expected) {
  const got = isLongLike(decoded) ? longToBigInt(decoded)
    : (typeof decoded === 'number' && Number.isInteger(decoded)) ? BigInt(decoded) : null;
  if (got === null) return false;
  if (typeof expected === 'string' && /^-?\d+$/.test(expected)) return got === BigInt(expected);
  if (typeof expected !== 'number' || !Number.isInteger(expected)) return false;
  return Number.isSafeInteger(expected) ? got === BigInt(expected) : Number(got) === expected;
}

function show(v) {
  if (v === undefined) return '(absent)';
  if (isLongLike(v)) return longToBigInt(v).toString();
  return JSON.stringify(v);
}

function valueEquals(datatype, decoded, expected) {
  if (expected === null || decoded === null) return expected === decoded; // is_null
  switch (datatype) {
    case 4: case 7: case 8: case 13: // 64-bit on the wire (UInt32 comes back as number)
    case 1: case 2: case 3: case 5: case 6:
      return intEquals(decoded, expected);
    case FLOAT: // stored as 32-bit float: relative tolerance
      return typeof decoded === 'number' && typeof expected === 'number' &&
        (decoded === expected ||
         Math.abs(decoded - expected) <= FLOAT_REL_TOL * Math.max(Math.abs(decoded), Math.abs(expected)));
    default: // Double, Boolean, String/Text/UUID: exact
      return decoded === expected;
  }
}

// Decode with Tahu. Sparkplug says DATA/CMD metrics SHOULD NOT carry a datatype
// (it is known from the BIRTH via the alias); Tahu's decodeMetric then yields
// type undefined and value null. For those metrics we put the expected datatype
// into the raw protobuf message and re-encode, so Tahu's own value conversion
// still does the interpretation. Returns { payload, wireTyped[] }.
function decode(bytes, expMetrics) {
  const raw = ProtoPayload.decode(bytes);
  const wireTyped = raw.metrics.map((m) => Object.prototype.hasOwnProperty.call(m, 'datatype'));
  let patched = false;
  raw.metrics.forEach((m, i) => {
    const e = expMetrics[i];
    if (!wireTyped[i] && e && Number.isInteger(e.datatype)) { m.datatype = e.datatype; patched = true; }
  });
  const payload = sparkplug.decodePayload(patched ? ProtoPayload.encode(raw).finish() : bytes);
  return { payload, wireTyped };
}

// Compare an optional uint64 field whose presence must match the expectation.
function compareOptionalInt(label, decoded, expected, diffs) {
  if (expected === undefined || decoded === undefined) {
    if (expected !== decoded) diffs.push(`${label}: expected ${show(expected)}, got ${show(decoded)}`);
  } else if (!intEquals(decoded, expected)) {
    diffs.push(`${label}: expected ${show(expected)}, got ${show(decoded)}`);
  }
}

function checkPair(bytes, exp) {
  const diffs = [];
  const expMetrics = Array.isArray(exp.metrics) ? exp.metrics : [];
  const { payload, wireTyped } = decode(bytes, expMetrics);
  const metrics = payload.metrics || [];

  compareOptionalInt('seq', payload.seq, exp.seq, diffs);
  compareOptionalInt('timestamp', payload.timestamp, exp.timestamp, diffs);
  if (metrics.length !== expMetrics.length) {
    diffs.push(`metric count: expected ${expMetrics.length}, got ${metrics.length}`);
  }

  // Metrics are compared in payload order.
  const n = Math.min(metrics.length, expMetrics.length);
  for (let i = 0; i < n; i++) {
    const m = metrics[i];
    const e = expMetrics[i];
    const tag = `metric[${i}]` + (e.name !== undefined ? ` ${e.name}` : e.alias !== undefined ? ` alias ${e.alias}` : '');

    if (m.name !== e.name) diffs.push(`${tag} name: expected ${show(e.name)}, got ${show(m.name)}`);
    compareOptionalInt(`${tag} alias`, m.alias, e.alias, diffs);

    const gotType = TYPE_NUMBERS[m.type]; // undefined if no datatype on the wire and none expected
    if (wireTyped[i] && gotType !== e.datatype) {
      diffs.push(`${tag} datatype: expected ${show(e.datatype)}, got ${gotType ?? show(m.type)}`);
      continue; // value comparison is meaningless with the wrong type
    }
    if (!SCALAR_TYPES.has(e.datatype)) {
      diffs.push(e.datatype === undefined && !wireTyped[i]
        ? `${tag}: no datatype on the wire or in the expectation`
        : `${tag}: datatype ${show(e.datatype)} not supported by this checker`);
      continue;
    }
    if (!valueEquals(e.datatype, m.value, e.value)) {
      diffs.push(`${tag} value: expected ${show(e.value)}, got ${show(m.value)}`);
    }
    // is_historical absent on the wire means false (proto2 default).
    if (e.is_historical !== undefined && (m.isHistorical === true) !== e.is_historical) {
      diffs.push(`${tag} is_historical: expected ${show(e.is_historical)}, got ${m.isHistorical === true}`);
    }
  }
  return diffs;
}

function main() {
  const dir = process.argv[2];
  let names;
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    console.error(`sparkplug-js: cannot read directory ${dir}: ${err.message}`);
    console.log('sparkplug-js: 0 passed, 0 failed');
    return 2;
  }
  // Every NNNN that has a .bin or a .json; an unpaired file is a failure.
  const ids = [...new Set(names.filter((f) => /\.(bin|json)$/.test(f)).map((f) => f.replace(/\.(bin|json)$/, '')))]
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  if (ids.length === 0) {
    console.error(`sparkplug-js: no NNNN.bin/NNNN.json pairs in ${dir}`);
    console.log('sparkplug-js: 0 passed, 0 failed');
    return 2;
  }

  let passed = 0;
  let failed = 0;
  for (const id of ids) {
    let topic = '?';
    let count = 0;
    let diffs;
    try {
      const exp = JSON.parse(fs.readFileSync(path.join(dir, `${id}.json`), 'utf8'));
      topic = exp.topic ?? '?';
      count = Array.isArray(exp.metrics) ? exp.metrics.length : 0;
      diffs = checkPair(fs.readFileSync(path.join(dir, `${id}.bin`)), exp);
    } catch (err) {
      diffs = [err.code === 'ENOENT' ? `missing ${path.basename(err.path)}` : `error: ${err.message}`];
    }
    if (diffs.length === 0) {
      passed++;
      console.log(`ok ${id} ${topic} (${count} metrics)`);
    } else {
      failed++;
      console.log(`FAIL ${id} ${topic}: ${diffs.join('; ')}`);
    }
  }
  console.log(`sparkplug-js: ${passed} passed, ${failed} failed`);
  return failed === 0 && passed > 0 ? 0 : 1;
}

process.exitCode = main();
