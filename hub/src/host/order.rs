//! Where a message falls in its edge node's Sparkplug `seq` stream, and the messages held back
//! until the ones before them arrive.
//!
//! One MQTT session delivers in order, but a broker cluster does not across a node's death: the
//! node that died had deliveries in flight that come back only once the cluster notices, after
//! newer ones reached the host through the next node. Holding what follows a gap (without
//! acknowledging it) until the gap fills keeps every machine's samples in order; a gap that
//! stays open past [`REORDER_TIMEOUT_MS`] is a loss.

use std::borrow::Cow;

use protocol::sparkplug::{MessageType, Payload, seq_gap};
use protocol::{GatewayId, LabId, MachineId};

/// How long the host holds what follows a Sparkplug seq gap, waiting for the stream to go on,
/// before it takes the gap for a loss, handles what it holds and asks for a rebirth.
pub const REORDER_TIMEOUT_MS: u64 = 2_000;

/// A message this far ahead of the stream or further is taken for one from behind it (a
/// redelivery of something already handled): `seq` counts modulo 256, so half the circle is
/// ahead and half behind.
const AHEAD_WINDOW: u8 = 128;

/// What ingest needs to acknowledge a message to the broker once it is stored. The host hands
/// it back after handling the message ([`super::HostAction::Acknowledge`]), so a message it
/// holds back is not acknowledged before it is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The MQTT packet id.
    pub pkid: u16,
    /// Delivered at QoS 2 (acknowledged with PUBREC) rather than QoS 1.
    pub exactly_once: bool,
}

/// A parsed, admitted message of an edge node.
#[derive(Debug)]
pub(super) struct Received<'a> {
    pub topic: Cow<'a, str>,
    pub lab: LabId,
    pub kind: MessageType,
    pub gateway: GatewayId,
    pub machine: Option<MachineId>,
    pub payload: Payload,
}

impl Received<'_> {
    /// The same message owning its topic, to be held past the buffer it arrived in.
    pub fn into_owned(self) -> Received<'static> {
        Received {
            topic: Cow::Owned(self.topic.into_owned()),
            lab: self.lab,
            kind: self.kind,
            gateway: self.gateway,
            machine: self.machine,
            payload: self.payload,
        }
    }
}

/// A message held back behind a gap.
#[derive(Debug)]
pub(super) struct Held {
    pub seq: u8,
    pub message: Received<'static>,
    pub delivery: Option<Delivery>,
}

/// Where a message falls relative to the last `seq` handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// The next one: handled, and the stream moves to it.
    Next(u8),
    /// Past a gap: held until the gap fills.
    Ahead(u8),
    /// Already passed (a redelivery after a reconnect): handled without moving the stream, and
    /// the twin drops what it has already counted by `node.seq`.
    Behind,
    /// Starts the stream: the first message of a session, after a restart, or an NBIRTH.
    Start(u8),
    /// Carries no usable `seq` (an NDEATH, which the broker publishes for the node).
    Unsequenced,
}

/// Where a message of `kind` with `seq` falls in a stream whose last handled `seq` is `last`.
pub(super) fn place(last: Option<u8>, born: bool, kind: MessageType, seq: Option<u64>) -> Place {
    let Some(seq) = seq.and_then(|seq| u8::try_from(seq).ok()) else {
        return Place::Unsequenced;
    };
    match last {
        Some(last) if born && kind != MessageType::NBirth => {
            match seq_gap(u64::from(last), u64::from(seq)) {
                Some(0) => Place::Next(seq),
                Some(gap) if gap < AHEAD_WINDOW => Place::Ahead(seq),
                _ => Place::Behind,
            }
        }
        _ => Place::Start(seq),
    }
}

/// What an edge node holds back, and since when its stream has not moved.
#[derive(Debug, Default)]
pub(super) struct Holding {
    held: Vec<Held>,
    /// When the stream last moved (or the first message was held) while something is held.
    waiting_since: Option<u64>,
}

impl Holding {
    /// A message with this `seq` is held already.
    pub fn holds(&self, seq: u8) -> bool {
        self.held.iter().any(|h| h.seq == seq)
    }

    /// Holds `held` (whose `seq` is not held yet, see [`Holding::holds`]).
    pub fn hold(&mut self, held: Held, now_ms: u64) {
        self.held.push(held);
        self.waiting_since.get_or_insert(now_ms);
    }

    /// The held message that follows `last`, if any.
    pub fn take_next(&mut self, last: u8) -> Option<Held> {
        let index = self
            .held
            .iter()
            .position(|h| seq_gap(u64::from(last), u64::from(h.seq)) == Some(0))?;
        Some(self.held.swap_remove(index))
    }

    /// The stream moved: what is still held waits afresh.
    pub fn moved(&mut self, now_ms: u64) {
        self.waiting_since = if self.held.is_empty() {
            None
        } else {
            Some(now_ms)
        };
    }

    /// The stream has not moved for the reorder timeout while something is held.
    pub fn timed_out(&self, now_ms: u64) -> bool {
        self.waiting_since
            .is_some_and(|since| now_ms.saturating_sub(since) >= REORDER_TIMEOUT_MS)
    }

    /// Everything held, in stream order from `last` (in arrival order without a `last`).
    pub fn take_all(&mut self, last: Option<u8>) -> Vec<Held> {
        self.waiting_since = None;
        let mut held = std::mem::take(&mut self.held);
        if let Some(last) = last {
            held.sort_by_key(|h| seq_gap(u64::from(last), u64::from(h.seq)));
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_falls_next_ahead_or_behind_around_the_wrapping_seq() {
        let data = MessageType::DData;
        assert_eq!(place(Some(255), true, data, Some(0)), Place::Next(0));
        assert_eq!(place(Some(250), true, data, Some(3)), Place::Ahead(3));
        assert_eq!(place(Some(10), true, data, Some(138)), Place::Ahead(138));
        assert_eq!(place(Some(10), true, data, Some(139)), Place::Behind);
        assert_eq!(place(Some(10), true, data, Some(10)), Place::Behind);
        assert_eq!(place(Some(3), true, data, Some(250)), Place::Behind);
    }

    #[test]
    fn a_birth_an_unborn_node_or_a_fresh_host_start_the_stream() {
        let data = MessageType::DData;
        assert_eq!(place(None, true, data, Some(7)), Place::Start(7));
        assert_eq!(place(Some(3), false, data, Some(7)), Place::Start(7));
        assert_eq!(
            place(Some(3), true, MessageType::NBirth, Some(0)),
            Place::Start(0)
        );
        assert_eq!(
            place(Some(3), true, MessageType::NDeath, None),
            Place::Unsequenced
        );
        assert_eq!(place(Some(3), true, data, Some(256)), Place::Unsequenced);
    }
}
