//! Serial sensor nodes: COBS-framed node frames over USB/UART ports, with hot-plug.
