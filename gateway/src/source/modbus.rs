//! Modbus TCP machines: registers polled on a schedule, published as a virtual node.
