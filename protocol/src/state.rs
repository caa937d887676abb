//! Machine states: the meaning of the `state.code` metric, shared by nodes, gateway and hub.

/// Operating state of a machine, as carried by the `state.code` metric.
///
/// The numeric [`code`](Self::code) is what goes on the wire, so existing codes
/// must never be renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    /// Powered down.
    Off,
    /// Powered, waiting (e.g. between parts); only auxiliaries draw power.
    Idle,
    /// Producing parts.
    Running,
    /// Warm-up program after power-on, before production resumes.
    Warming,
    /// Stopped by a fault.
    Fault,
}

impl MachineState {
    /// Compact wire code: Off=0, Idle=1, Running=2, Warming=3, Fault=4.
    pub fn code(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::Idle => 1,
            Self::Running => 2,
            Self::Warming => 3,
            Self::Fault => 4,
        }
    }

    /// Inverse of [`code`](Self::code); `None` for unknown codes.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Off),
            1 => Some(Self::Idle),
            2 => Some(Self::Running),
            3 => Some(Self::Warming),
            4 => Some(Self::Fault),
            _ => None,
        }
    }

    /// Lower-case name: "off", "idle", "running", "warming", "fault".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Idle => "idle",
            Self::Running => "running",
            Self::Warming => "warming",
            Self::Fault => "fault",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [MachineState; 5] = [
        MachineState::Off,
        MachineState::Idle,
        MachineState::Running,
        MachineState::Warming,
        MachineState::Fault,
    ];

    #[test]
    fn codes_round_trip_and_are_stable() {
        for (i, s) in ALL.iter().enumerate() {
            assert_eq!(usize::from(s.code()), i);
            assert_eq!(MachineState::from_code(s.code()), Some(*s));
        }
        assert_eq!(MachineState::from_code(5), None);
        assert_eq!(MachineState::from_code(u8::MAX), None);
    }

    #[test]
    fn names() {
        let names: Vec<_> = ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["off", "idle", "running", "warming", "fault"]);
    }
}
