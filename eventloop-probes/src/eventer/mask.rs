//! The event mask: libmtev's `EVENTER_READ`/`WRITE`/`EXCEPTION`/`TIMER` as
//! a typed bitset, like mio's `Interest`, converted to the libmtev integer
//! only where a probe fires.

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};

use usdt_provider::mask as bits;

/// What a callback waits for, what woke it, and what it wants next.
///
/// A callback gets the ready mask and returns its new one; [`Mask::NONE`]
/// means done (the eventer closes the source). The probes carry
/// [`Mask::bits`], libmtev's integer values, so scripts written for
/// libmtev read them unchanged.
///
/// ```
/// use eventloop_probes::eventer::Mask;
///
/// let m = Mask::READ | Mask::WRITE;
/// assert!(m.contains(Mask::READ));
/// assert!(!m.contains(Mask::EXCEPTION));
/// assert_eq!(m.bits(), 0x03);
/// assert_eq!(format!("{m:?}"), "READ | WRITE");
/// assert!(Mask::NONE.is_empty());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mask(i32);

impl Mask {
    /// Nothing: returned by a callback, the event is done.
    pub const NONE: Mask = Mask(0);
    /// The fd is readable (`EVENTER_READ`, 0x01).
    pub const READ: Mask = Mask(bits::READ);
    /// The fd is writable (`EVENTER_WRITE`, 0x02).
    pub const WRITE: Mask = Mask(bits::WRITE);
    /// An error or hang-up on the fd (`EVENTER_EXCEPTION`, 0x04). Always
    /// delivered, whether asked for or not, as epoll does.
    pub const EXCEPTION: Mask = Mask(bits::EXCEPTION);
    /// A timer fired; its fd is -1 (`EVENTER_TIMER`, 0x08).
    pub const TIMER: Mask = Mask(bits::TIMER);

    const ALL: i32 = bits::READ | bits::WRITE | bits::EXCEPTION | bits::TIMER;

    /// libmtev's integer, as the probes carry it.
    pub const fn bits(self) -> i32 {
        self.0
    }

    /// The mask of libmtev integer `bits`; bits libmtev does not define
    /// are dropped.
    pub const fn from_bits(bits: i32) -> Mask {
        Mask(bits & Mask::ALL)
    }

    /// Whether every bit of `other` is set here.
    pub const fn contains(self, other: Mask) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set here.
    pub const fn intersects(self, other: Mask) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The ready mask of a mio event: a hang-up counts as readable (the
    /// read that follows returns 0) and writable, an error as EXCEPTION.
    pub fn of_event(e: &mio::event::Event) -> Mask {
        let mut m = Mask::NONE;
        if e.is_readable() || e.is_read_closed() {
            m |= Mask::READ;
        }
        if e.is_writable() || e.is_write_closed() {
            m |= Mask::WRITE;
        }
        if e.is_error() {
            m |= Mask::EXCEPTION;
        }
        m
    }

    /// The mio interest for waiting on this mask; `None` if it has neither
    /// READ nor WRITE (mio cannot wait for nothing; EXCEPTION comes anyway).
    pub fn interest(self) -> Option<mio::Interest> {
        match (self.contains(Mask::READ), self.contains(Mask::WRITE)) {
            (true, true) => Some(mio::Interest::READABLE | mio::Interest::WRITABLE),
            (true, false) => Some(mio::Interest::READABLE),
            (false, true) => Some(mio::Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

impl BitOr for Mask {
    type Output = Mask;
    fn bitor(self, rhs: Mask) -> Mask {
        Mask(self.0 | rhs.0)
    }
}

impl BitOrAssign for Mask {
    fn bitor_assign(&mut self, rhs: Mask) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for Mask {
    type Output = Mask;
    fn bitand(self, rhs: Mask) -> Mask {
        Mask(self.0 & rhs.0)
    }
}

impl From<Mask> for i32 {
    fn from(m: Mask) -> i32 {
        m.0
    }
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("NONE");
        }
        let mut sep = "";
        for (bit, name) in [
            (Mask::READ, "READ"),
            (Mask::WRITE, "WRITE"),
            (Mask::EXCEPTION, "EXCEPTION"),
            (Mask::TIMER, "TIMER"),
        ] {
            if self.contains(bit) {
                write!(f, "{sep}{name}")?;
                sep = " | ";
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libmtev_values_and_conversions() {
        assert_eq!(
            [Mask::READ, Mask::WRITE, Mask::EXCEPTION, Mask::TIMER].map(Mask::bits),
            [1, 2, 4, 8]
        );
        assert_eq!(Mask::from_bits(0x13), Mask::READ | Mask::WRITE);
        assert_eq!(i32::from(Mask::READ | Mask::TIMER), 9);
        assert_eq!((Mask::READ | Mask::WRITE) & Mask::WRITE, Mask::WRITE);
        assert!(Mask::READ.intersects(Mask::READ | Mask::EXCEPTION));
        assert_eq!(format!("{:?}", Mask::NONE), "NONE");
        assert_eq!(Mask::EXCEPTION.interest(), None);
        assert_eq!(
            (Mask::WRITE | Mask::EXCEPTION).interest(),
            Some(mio::Interest::WRITABLE)
        );
    }
}
