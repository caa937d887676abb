//! The composition root's reusable part: the demo mode's scenario control, which joins the hub's
//! `ScenarioControl` interface to the simulators (the only place that knows both), and the
//! region itself ([`region`]), built from a region file ([`region_file`], the demo's own being
//! `demo/region.toml`), which the `demolab` binary runs and tests start on port 0.

mod lab;
pub mod region;
pub mod region_file;
pub mod scenarios;
