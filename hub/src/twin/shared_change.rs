//! A change as the streams share it: written as JSON once per view, not once per client.
//!
//! A class of thirty browsers watching one lab made the hub write every change thirty times
//! (and copy it first, to hide what a reader may not see). Each view's JSON is now written by
//! the first client that needs it and handed to the others as shared bytes.

use std::ops::Deref;
use std::sync::OnceLock;

use bytes::Bytes;

use super::TwinChange;

/// What a stream client may see of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Everything (operators).
    Whole,
    /// Without the Sparkplug `bdSeq`, which would let a reader forge the gateway's NDEATH.
    Reader,
}

/// A change sent to the streams, with its JSON per view once a client asked for it.
#[derive(Debug)]
pub struct SharedChange {
    change: TwinChange,
    whole: OnceLock<Bytes>,
    reader: OnceLock<Bytes>,
}

impl SharedChange {
    /// Wraps a change; nothing is written yet.
    pub fn new(change: TwinChange) -> Self {
        Self {
            change,
            whole: OnceLock::new(),
            reader: OnceLock::new(),
        }
    }

    /// The change as `view` shows it, as JSON. Cheap after the first call for that view.
    pub fn json(&self, view: View) -> Bytes {
        let hides_something = self
            .change
            .sparkplug
            .as_ref()
            .is_some_and(|hop| hop.bd_seq.is_some());
        if view == View::Whole || !hides_something {
            return self.whole.get_or_init(|| to_json(&self.change)).clone();
        }
        self.reader
            .get_or_init(|| to_json(&redacted(self.change.clone(), view)))
            .clone()
    }
}

/// `change` with what `view` must not show taken out.
pub fn redacted(mut change: TwinChange, view: View) -> TwinChange {
    if view == View::Reader
        && let Some(hop) = &mut change.sparkplug
    {
        hop.bd_seq = None;
    }
    change
}

fn to_json(change: &TwinChange) -> Bytes {
    // A change holds strings, numbers and maps with string keys: it always serialises.
    Bytes::from(serde_json::to_vec(change).unwrap_or_default())
}

impl Deref for SharedChange {
    type Target = TwinChange;

    fn deref(&self) -> &TwinChange {
        &self.change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::SparkplugHop;

    fn sample(bd_seq: Option<u64>) -> TwinChange {
        TwinChange {
            kind: "sample".into(),
            lab: "lab-a".into(),
            machine: "mill-1".into(),
            seq: Some(7),
            timestamp: 1_000,
            values: [("spindle.power_w".to_owned(), 1250.0)].into(),
            state: "running".into(),
            online: true,
            alarm: None,
            desired: None,
            received_ms: Some(1_001),
            sparkplug: Some(SparkplugHop {
                message: "DDATA".into(),
                topic: "spBv1.0/lab-a/DDATA/gw/mill-1".into(),
                seq: Some(3),
                bd_seq,
            }),
        }
    }

    fn parsed(bytes: &Bytes) -> TwinChange {
        serde_json::from_slice(bytes).expect("a change")
    }

    #[test]
    fn each_view_is_written_once_and_a_reader_never_sees_the_bd_seq() {
        let shared = SharedChange::new(sample(Some(4)));
        let whole = shared.json(View::Whole);
        let reader = shared.json(View::Reader);
        assert_eq!(parsed(&whole), sample(Some(4)));
        assert_eq!(parsed(&reader), sample(None));
        // The same bytes again, not a second serialisation.
        assert_eq!(shared.json(View::Reader).as_ptr(), reader.as_ptr());
        assert_eq!(shared.json(View::Whole).as_ptr(), whole.as_ptr());
    }

    #[test]
    fn with_nothing_to_hide_both_views_share_one_text() {
        let shared = SharedChange::new(sample(None));
        assert_eq!(
            shared.json(View::Reader).as_ptr(),
            shared.json(View::Whole).as_ptr()
        );
    }
}
