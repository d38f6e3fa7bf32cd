//! OCF interfaces (OCF Core §7.6.3): which view of a resource a request asks for.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interface {
    /// `oic.if.baseline`: all properties plus the common ones (`rt`, `if`, `n`).
    Baseline,
    /// `oic.if.ll`: the links of a collection or of `/oic/res`.
    LinkList,
    /// `oic.if.b`: batch, the representations of the linked resources.
    Batch,
    /// `oic.if.r`: read-only view.
    ReadOnly,
    /// `oic.if.rw`: read-write view.
    ReadWrite,
    /// `oic.if.a`: actuator.
    Actuator,
    /// `oic.if.s`: sensor (read-only).
    Sensor,
    /// `oic.if.create`.
    Create,
    /// `oic.if.w`: write-only.
    WriteOnly,
}

impl Interface {
    pub const ALL: [Interface; 9] = [
        Interface::Baseline,
        Interface::LinkList,
        Interface::Batch,
        Interface::ReadOnly,
        Interface::ReadWrite,
        Interface::Actuator,
        Interface::Sensor,
        Interface::Create,
        Interface::WriteOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Interface::Baseline => "oic.if.baseline",
            Interface::LinkList => "oic.if.ll",
            Interface::Batch => "oic.if.b",
            Interface::ReadOnly => "oic.if.r",
            Interface::ReadWrite => "oic.if.rw",
            Interface::Actuator => "oic.if.a",
            Interface::Sensor => "oic.if.s",
            Interface::Create => "oic.if.create",
            Interface::WriteOnly => "oic.if.w",
        }
    }

    pub fn parse(s: &str) -> Option<Interface> {
        Interface::ALL.into_iter().find(|i| i.as_str() == s)
    }

    /// Whether an update (POST) may go through this interface.
    pub fn allows_update(self) -> bool {
        matches!(
            self,
            Interface::Baseline
                | Interface::ReadWrite
                | Interface::Actuator
                | Interface::Create
                | Interface::WriteOnly
                | Interface::Batch
        )
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Policy bits of a resource (OCF Core §7.8.2.1.2, the `p.bm` of its link) plus the `secure`
/// flag, which says the resource is only served on secure endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    pub discoverable: bool,
    pub observable: bool,
    pub secure: bool,
}

impl Policy {
    pub const DISCOVERABLE: u8 = 0x01;
    pub const OBSERVABLE: u8 = 0x02;

    pub fn discoverable_observable() -> Policy {
        Policy {
            discoverable: true,
            observable: true,
            secure: false,
        }
    }

    pub fn discoverable() -> Policy {
        Policy {
            discoverable: true,
            observable: false,
            secure: false,
        }
    }

    /// The `bm` bitmask of the link.
    pub fn bm(self) -> u8 {
        (if self.discoverable {
            Self::DISCOVERABLE
        } else {
            0
        }) | (if self.observable { Self::OBSERVABLE } else { 0 })
    }
}
