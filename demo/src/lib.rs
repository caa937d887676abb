//! The composition root's reusable part: the demo mode's scenario control, which joins the hub's
//! `ScenarioControl` interface to the simulators (the only place that knows both). The `demolab`
//! binary in `main.rs` wires the whole demo region.

pub mod scenarios;
