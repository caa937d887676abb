//! The composition root's reusable part: the demo mode's scenario control, which joins the hub's
//! `ScenarioControl` interface to the simulators (the only place that knows both), and the demo
//! region itself ([`region`]), which the `demolab` binary runs and tests start on port 0.

pub mod region;
pub mod scenarios;
