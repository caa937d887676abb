#!/usr/bin/env python3
"""Reads the registers of a running `demolab-sim plc --hold` with pymodbus (an independent
Modbus TCP client) and checks them against the values the simulator printed.

Usage: check.py HOST PORT PLC_STDOUT_FILE

The file holds the simulator's stdout; its `PLC VALUES {json}` line lists the machine's values.
Register map (see simulators/src/plc.rs): input 2i,2i+1 = metric i as f32, high word first;
holding 2i,2i+1 = metric i x 100 as i32, high word first; holding 1000 = state code,
holding 1001 = number of metrics.
"""

import json
import math
import struct
import sys

from pymodbus.client import ModbusTcpClient

UNIT = 1


def fail(message):
    print(f"modbus-py: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def read(client, table, address, count):
    if table == "input":
        response = client.read_input_registers(address, count, slave=UNIT)
    else:
        response = client.read_holding_registers(address, count, slave=UNIT)
    if response.isError():
        fail(f"reading {count} {table} registers at {address}: {response}")
    return response.registers


def main():
    if len(sys.argv) != 4:
        fail(__doc__)
    host, port, stdout_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with open(stdout_file, encoding="utf-8") as f:
        lines = [l for l in f if l.startswith("PLC VALUES ")]
    if not lines:
        fail(f"no 'PLC VALUES' line in {stdout_file}")
    expected = json.loads(lines[0][len("PLC VALUES "):])
    values = expected["values"]
    n = len(values)

    client = ModbusTcpClient(host, port=port, timeout=5)
    if not client.connect():
        fail(f"cannot connect to {host}:{port}")
    try:
        words_f32 = read(client, "input", 0, 2 * n)
        words_i32 = read(client, "holding", 0, 2 * n)
        state, count = read(client, "holding", 1000, 2)
        # One past the map must be refused, not answered with made-up data.
        beyond = client.read_input_registers(2 * n, 2, slave=UNIT)
    finally:
        client.close()

    if not beyond.isError():
        fail("a read past the register map was answered")
    if count != n:
        fail(f"metric count register {count}, expected {n}")
    if state != expected["state"]:
        fail(f"state register {state}, expected {expected['state']}")
    for i, v in enumerate(values):
        raw = struct.pack(">HH", words_f32[2 * i], words_f32[2 * i + 1])
        got = struct.unpack(">f", raw)[0]
        want = struct.unpack(">f", struct.pack(">f", v["value"]))[0]
        if got != want:
            fail(f"{v['metric']}: f32 registers give {got}, expected {want}")
        centi = struct.unpack(">i", struct.pack(">HH", words_i32[2 * i], words_i32[2 * i + 1]))[0]
        if not math.isclose(centi / 100.0, v["value"], abs_tol=0.005 + 1e-6):
            fail(f"{v['metric']}: i32 registers give {centi / 100.0}, expected {v['value']}")
        print(f"modbus-py: {v['metric']:<24} f32 {got:<14.6g} i32/100 {centi / 100.0:<12} {v['unit']}")
    print(f"modbus-py: OK, {n} metrics, state {state}, read by pymodbus from {host}:{port}")


if __name__ == "__main__":
    main()
