//! Same seed + same scenario ⇒ byte-identical node frame stream; a different seed differs.
//!
//! Every shipped scenario is run offline (simulated clock, no network) through the real firmware
//! core and the protocol codec, twice per seed, and the encoded frames are compared byte for
//! byte. The frames are also decoded again, so what is compared is what a gateway would accept.

use anyhow::{Context, ensure};
use protocol::{Frame, codec};
use simulators::scenario::{SHIPPED, Scenario};

#[test]
fn same_seed_and_scenario_give_byte_identical_frames() -> anyhow::Result<()> {
    for (name, _) in SHIPPED {
        let mut s = Scenario::find(name)?;
        // Long enough to pass the first scripted events of every scenario.
        s.duration = s.duration.min(std::time::Duration::from_secs(2 * 3600));
        let a = s.offline_frames(42, 1)?;
        let b = s.offline_frames(42, 1)?;
        let c = s.offline_frames(43, 1)?;
        ensure!(a == b, "{name}: two runs with seed 42 differ");
        ensure!(a != c, "{name}: seeds 42 and 43 gave the same frames");
        let mut bytes = 0usize;
        for (node, frames) in &a {
            ensure!(
                frames.len() == s.samples() as usize + 1,
                "{name}: node {node} has {} frames",
                frames.len()
            );
            let first = codec::decode(frames.first().context("a Hello")?)?;
            ensure!(
                matches!(first, Frame::Hello(_)),
                "{name}: first frame {first:?}"
            );
            for (i, f) in frames.iter().enumerate().skip(1) {
                match codec::decode(f)? {
                    Frame::Samples(samples) => ensure!(samples.seq as usize == i),
                    other => anyhow::bail!("{name}: frame {i} is {other:?}"),
                }
                bytes += f.len();
            }
        }
        println!(
            "{name}: {} nodes, {} bytes of samples, identical for seed 42",
            a.len(),
            bytes
        );
    }
    Ok(())
}
