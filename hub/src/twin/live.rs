//! The part of a twin that samples change, stored on its own.
//!
//! A sample changes a twin's values, counters, KPIs, state and connectivity, never its name,
//! attributes, relations, desired values or alarm summary. Each commit stores, for every twin it
//! touched, this live part in a compact binary form (about a fifth of the twin's JSON), and the
//! whole twin only when something else changed since the last commit. Loading lays the live
//! part over the whole twin.

use serde::{Deserialize, Serialize};

use super::{Connectivity, Feature, NameMap, StateInfo, Twin};
use crate::kpi::Kpis;

/// The first byte of a stored live part: the layout below. postcard is not self-describing, so
/// a change to these fields (or to the types they hold) needs a new format number.
const FORMAT: u8 = 1;

#[derive(Serialize)]
struct LiveRef<'a> {
    features: &'a NameMap<Feature>,
    kpis: &'a Kpis,
    state: &'a StateInfo,
    connectivity: &'a Connectivity,
    boot: Option<u32>,
    last_seq: u32,
    samples: u64,
    historical_samples: u64,
    missing_seqs: &'a [u32],
}

#[derive(Deserialize)]
struct Live {
    features: NameMap<Feature>,
    kpis: Kpis,
    state: StateInfo,
    connectivity: Connectivity,
    boot: Option<u32>,
    last_seq: u32,
    samples: u64,
    historical_samples: u64,
    missing_seqs: Vec<u32>,
}

/// Why a stored live part could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// Written by a build with another layout.
    #[error("live part in format {0}, this build reads format {FORMAT}")]
    Format(u8),
    /// Not a live part of this layout.
    #[error("live part does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// Appends the live part of `twin` to `out`.
pub fn encode(twin: &Twin, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    out.push(FORMAT);
    let live = LiveRef {
        features: &twin.features,
        kpis: &twin.kpis,
        state: &twin.state,
        connectivity: &twin.connectivity,
        boot: twin.boot,
        last_seq: twin.last_seq,
        samples: twin.samples,
        historical_samples: twin.historical_samples,
        missing_seqs: &twin.missing_seqs,
    };
    let taken = std::mem::take(out);
    *out = postcard::to_extend(&live, taken)?;
    Ok(())
}

/// Lays a stored live part over `twin`. On error `twin` is unchanged.
pub fn apply(twin: &mut Twin, bytes: &[u8]) -> Result<(), LiveError> {
    let Some((&format, body)) = bytes.split_first() else {
        return Err(LiveError::Decode(postcard::Error::DeserializeUnexpectedEnd));
    };
    if format != FORMAT {
        return Err(LiveError::Format(format));
    }
    let live: Live = postcard::from_bytes(body)?;
    twin.features = live.features;
    twin.kpis = live.kpis;
    twin.state = live.state;
    twin.connectivity = live.connectivity;
    twin.boot = live.boot;
    twin.last_seq = live.last_seq;
    twin.samples = live.samples;
    twin.historical_samples = live.historical_samples;
    twin.missing_seqs = live.missing_seqs;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::{Property, TwinKey};

    #[test]
    fn a_live_part_carries_every_field_a_sample_changes() {
        let key = TwinKey::parse("lab-a/m-1").expect("key");
        let mut now = Twin::new(&key);
        now.name = Some("press".into());
        now.features
            .get_or_insert_with("spindle", Default::default)
            .properties
            .insert(
                "power_w".into(),
                Property {
                    reported: Some(1234.5),
                    unit: "W".into(),
                    timestamp: Some(77),
                    stale: false,
                },
            );
        now.kpis.energy_today_wh = 3.25;
        now.state = StateInfo {
            value: "running".into(),
            since: Some(70),
        };
        now.connectivity = Connectivity {
            online: true,
            gateway: Some("gw-1".into()),
            last_seen: Some(77),
            stale: false,
        };
        now.boot = Some(9);
        now.last_seq = 41;
        now.samples = 40;
        now.historical_samples = 3;
        now.missing_seqs = vec![12, 13];
        let mut bytes = Vec::new();
        encode(&now, &mut bytes).expect("encodes");
        let mut json = Vec::new();
        serde_json::to_writer(&mut json, &now).expect("json");
        assert!(
            bytes.len() * 2 < json.len(),
            "{} against {}",
            bytes.len(),
            json.len()
        );

        // The whole twin as stored before the samples: the live part brings it up to date.
        let mut stored = Twin::new(&key);
        stored.name = Some("press".into());
        apply(&mut stored, &bytes).expect("applies");
        assert_eq!(stored, now);
    }

    #[test]
    fn a_damaged_or_foreign_live_part_is_refused_and_changes_nothing() {
        let key = TwinKey::parse("lab-a/m-1").expect("key");
        let mut twin = Twin::new(&key);
        twin.samples = 5;
        let mut bytes = Vec::new();
        encode(&twin, &mut bytes).expect("encodes");
        let mut target = Twin::new(&key);
        for bad in [&[][..], &bytes[..bytes.len() / 2], &[FORMAT + 1, 0, 0][..]] {
            assert!(apply(&mut target, bad).is_err(), "{bad:?}");
            assert_eq!(target, Twin::new(&key));
        }
    }
}
