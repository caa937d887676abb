#!/usr/bin/env node
// Self test: write NNNN.bin/NNNN.json pairs with the package's own encodePayload
// into a temp dir, run check.js on them, and assert the outcome:
//   good set            -> all ok, exit 0
//   wrong expectations  -> exactly the mutated files FAIL, exit 1
//   empty / missing dir -> exit 2
'use strict';

const assert = require('assert');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');
const sparkplug = require('sparkplug-payload').get('spBv1.0');
const ProtoPayload =
  require('sparkplug-payload/lib/sparkplugPayloadProto').org.eclipse.tahu.protobuf.Payload;

const TYPE_NAMES = { 3: 'Int32', 4: 'Int64', 7: 'UInt32', 8: 'UInt64', 9: 'Float', 10: 'Double', 11: 'Boolean', 12: 'String' };
const TS = 1764200000000;

// Messages in the expectation (Rust JSON) form. `stripDatatype` removes the
// datatype from the wire, as a spec-compliant DDATA may do.
const MESSAGES = [
  { topic: 'spBv1.0/lab-a/NBIRTH/gw-a', seq: 0, timestamp: TS, metrics: [
    { name: 'bdSeq', datatype: 8, value: 3 },
    { name: 'Node Control/Rebirth', alias: 1, datatype: 11, value: false, is_historical: false },
  ] },
  { topic: 'spBv1.0/lab-a/DBIRTH/gw-a/mill-1', seq: 1, timestamp: TS + 1, metrics: [
    { name: 'spindle.power_w', alias: 3, datatype: 9, value: 1234.5, is_historical: false },
    { name: 'spindle.rpm', alias: 4, datatype: 7, value: 3000000000, is_historical: false }, // > 2^31
    { name: 'status', alias: 5, datatype: 12, value: 'running', is_historical: false },
    { name: 'count', alias: 6, datatype: 4, value: -42, is_historical: false },
    { name: 'temp_c', alias: 7, datatype: 10, value: 21.125, is_historical: false },
    { name: 'offset', alias: 8, datatype: 3, value: -7, is_historical: false },
    { name: 'energy_wh', alias: 9, datatype: 8, value: 2 ** 53, is_historical: false },
    { name: 'door.open', alias: 10, datatype: 11, value: true, is_historical: false },
  ] },
  { topic: 'spBv1.0/lab-a/DDATA/gw-a/mill-1', seq: 2, timestamp: TS + 2, metrics: [
    { alias: 3, datatype: 9, value: 0.1, is_historical: false }, // not exact in float32
    { alias: 4, datatype: 7, value: 4294967295, is_historical: false },
    { alias: 5, datatype: 12, value: 'idle', is_historical: false },
    { alias: 6, datatype: 4, value: -(2 ** 53 - 1), is_historical: false },
    { alias: 7, datatype: 10, value: 20.5, is_historical: true },
  ] },
  { topic: 'spBv1.0/lab-a/DDATA/gw-a/mill-1', seq: 3, timestamp: TS + 3, stripDatatype: true, metrics: [
    { alias: 3, datatype: 9, value: 2.5 },
    { alias: 4, datatype: 7, value: 7 },
    { alias: 6, datatype: 4, value: -1 },
    { alias: 10, datatype: 11, value: false },
  ] },
  { topic: 'spBv1.0/lab-a/NDEATH/gw-a', timestamp: TS + 4, metrics: [ // NDEATH has no seq
    { name: 'bdSeq', datatype: 8, value: 3 },
  ] },
];

function encode(msg) {
  const bytes = sparkplug.encodePayload({
    timestamp: msg.timestamp,
    seq: msg.seq,
    metrics: msg.metrics.map((m) => ({
      name: m.name, alias: m.alias, type: TYPE_NAMES[m.datatype], value: m.value, isHistorical: m.is_historical,
    })),
  });
  if (!msg.stripDatatype) return bytes;
  const raw = ProtoPayload.decode(bytes);
  for (const m of raw.metrics) delete m.datatype; // own property -> falls back to prototype, not encoded
  return ProtoPayload.encode(raw).finish();
}

function writeSet(dir, messages) {
  fs.mkdirSync(dir, { recursive: true });
  messages.forEach((msg, i) => {
    const id = String(i + 1).padStart(4, '0');
    const { stripDatatype, ...expectation } = msg;
    fs.writeFileSync(path.join(dir, `${id}.bin`), encode(msg));
    fs.writeFileSync(path.join(dir, `${id}.json`), JSON.stringify(expectation, null, 2) + '\n');
  });
}

function runCheck(dir) {
  const r = spawnSync(process.execPath, [path.join(__dirname, 'check.js'), dir], { encoding: 'utf8' });
  process.stdout.write(r.stdout.replace(/^(?=.)/gm, '    '));
  return r;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sparkplug-js-check-'));
try {
  // 1. Good set: everything must pass.
  const good = path.join(tmp, 'good');
  writeSet(good, MESSAGES);
  // Sanity: the stripped DDATA really has no datatype on the wire.
  assert.strictEqual(sparkplug.decodePayload(fs.readFileSync(path.join(good, '0004.bin'))).metrics[0].type, undefined);
  console.log('good set:');
  let r = runCheck(good);
  assert.strictEqual(r.status, 0, 'good set must exit 0');
  assert.match(r.stdout, /^sparkplug-js: 5 passed, 0 failed$/m);

  // 2. Wrong expectations: the .bin files are the good ones, each mutated .json must FAIL.
  const bad = path.join(tmp, 'bad');
  writeSet(bad, MESSAGES);
  const mutate = (id, fn) => {
    const f = path.join(bad, `${id}.json`);
    const e = JSON.parse(fs.readFileSync(f, 'utf8'));
    fn(e);
    fs.writeFileSync(f, JSON.stringify(e));
  };
  mutate('0001', (e) => { e.metrics[0].datatype = 4; });      // UInt64 expected as Int64
  mutate('0002', (e) => { e.metrics[1].alias = 40; });        // wrong alias
  mutate('0003', (e) => { e.metrics[0].value = 0.1001; });    // float off by 1e-3 relative
  mutate('0004', (e) => { e.seq = 4; e.metrics[2].value = -2; }); // datatype-less DDATA: wrong seq and Int64
  console.log('wrong expectations:');
  r = runCheck(bad);
  assert.strictEqual(r.status, 1, 'wrong expectations must exit 1');
  assert.match(r.stdout, /^sparkplug-js: 1 passed, 4 failed$/m);
  assert.match(r.stdout, /^FAIL 0001 .*datatype: expected 4, got 8/m);
  assert.match(r.stdout, /^FAIL 0002 .*alias: expected 40, got 4/m);
  assert.match(r.stdout, /^FAIL 0003 .*value: expected 0\.1001/m);
  assert.match(r.stdout, /^FAIL 0004 .*seq: expected 4, got 3; .*alias 6 value: expected -2, got -1$/m);
  assert.match(r.stdout, /^ok 0005 /m);

  // 3. Empty and missing directories.
  const empty = path.join(tmp, 'empty');
  fs.mkdirSync(empty);
  assert.strictEqual(spawnSync(process.execPath, [path.join(__dirname, 'check.js'), empty]).status, 2);
  assert.strictEqual(spawnSync(process.execPath, [path.join(__dirname, 'check.js'), path.join(tmp, 'nope')]).status, 2);
  console.log('empty/missing dir: exit 2');

  console.log('selftest: PASS');
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
