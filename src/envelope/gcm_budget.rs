//! GCM invocations. Every AES-GCM encryption under a DEK takes one
//! *invocation number* of its key material (the key's print, see
//! `crypto::KeyPrint`): two DEKs holding the same value (a copy, a
//! re-import) share one sequence of numbers.
//!
//! Numbers are handed out in three tiers, so that an encryption costs a
//! plain increment:
//!
//! - a [`Lease`] (one per session and direction, or per message
//!   operation) holds a small run of numbers and is used under the
//!   session's own lock;
//! - the process's [`KeyBudget`] for the key hands out those runs from its
//!   block, under its mutex;
//! - the block comes from the key's budget for this process.
//!
//! The numbers feed the counter IVs the module makes
//! (`crypto::gcm_iv::counter`): with the per-process random prefix of the
//! key's budget, they make the IV.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cryptoki_sys::*;

use crate::crypto::KeyPrint;
use crate::error::{Error, Result};
use crate::runtime::lock::unpoisoned;

/// Invocation numbers are 32 bits (the counter field of a module IV).
pub const NUMBERS: u64 = 1 << 32;

/// Numbers a lease takes from its key's budget at a time.
const RUN: u64 = 256;

/// One key's numbers in this process.
pub struct KeyBudget {
    print: KeyPrint,
    /// Random, drawn once per key and process: the prefix of counter IVs.
    prefix: u128,
    block: Mutex<Block>,
}

/// The numbers this process may still hand out: `next..end`.
struct Block {
    next: u64,
    end: u64,
}

impl KeyBudget {
    pub fn print(&self) -> &KeyPrint {
        &self.print
    }
}

/// A run of invocation numbers, held by one session (under its lock), so
/// taking one is a plain increment.
pub struct Lease {
    budget: Arc<KeyBudget>,
    next: u64,
    end: u64,
}

impl Lease {
    /// The next number of this lease's run, if it has one left.
    #[inline]
    pub fn take_local(&mut self) -> Option<u32> {
        if self.next < self.end {
            let n = self.next;
            self.next += 1;
            u32::try_from(n).ok()
        } else {
            None
        }
    }

    /// The random prefix of counter IVs for this key in this process.
    pub fn prefix(&self) -> u128 {
        self.budget.prefix
    }

    pub fn budget(&self) -> &Arc<KeyBudget> {
        &self.budget
    }
}

/// Every key's budget in this process, by print.
#[derive(Default)]
pub struct GcmBudgets {
    keys: Mutex<HashMap<KeyPrint, Arc<KeyBudget>>>,
}

impl GcmBudgets {
    /// An empty lease on `print`'s budget (made on first use).
    fn lease(&self, print: &KeyPrint) -> Lease {
        let mut keys = unpoisoned(self.keys.lock());
        let budget = keys
            .entry(*print)
            .or_insert_with(|| {
                let mut prefix = [0u8; 16];
                // A failed draw leaves zeros: uniqueness of counter IVs does
                // not rest on the prefix (see `take`).
                if crate::crypto::gcm_iv::random_bytes(&mut prefix).is_err() {
                    crate::log_warn!("no random prefix for counter IVs; using zeros");
                }
                Arc::new(KeyBudget {
                    print: *print,
                    prefix: u128::from_be_bytes(prefix),
                    block: Mutex::new(Block {
                        next: 0,
                        end: NUMBERS,
                    }),
                })
            })
            .clone();
        Lease {
            budget,
            next: 0,
            end: 0,
        }
    }

    /// The next invocation number of the key `print`, from the session's
    /// lease in `slot` (made, or replaced when it is another key's).
    pub fn take(&self, slot: &mut Option<Lease>, print: &KeyPrint) -> Result<u32> {
        match slot {
            Some(l) if l.budget.print == *print => {
                if let Some(n) = l.take_local() {
                    return Ok(n);
                }
                self.refill(l)
            }
            _ => {
                // The old lease (if any) gives its unused numbers back.
                let l = slot.insert(self.lease(print));
                self.refill(l)
            }
        }
    }

    /// A new run for `lease` from its key's budget, and its first number.
    fn refill(&self, lease: &mut Lease) -> Result<u32> {
        let mut block = unpoisoned(lease.budget.block.lock());
        if block.next >= block.end {
            crate::log_warn!("GCM invocation numbers of a key are used up in this process");
            return Err(Error::Rv(CKR_DATA_LEN_RANGE));
        }
        let run = RUN.min(block.end - block.next);
        lease.next = block.next;
        lease.end = block.next + run;
        block.next += run;
        drop(block);
        lease.take_local().ok_or(Error::Rv(CKR_GENERAL_ERROR))
    }
}

/// A lease ends (its session moved to another key, closed, logged out):
/// if its run is the last one its budget handed out, the numbers it did
/// not use go back, so that short-lived operations waste nothing.
impl Drop for Lease {
    fn drop(&mut self) {
        if self.next >= self.end {
            return;
        }
        let mut block = unpoisoned(self.budget.block.lock());
        if block.next == self.end {
            block.next = self.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_on_one_key_never_share_a_number() {
        let budgets = GcmBudgets::default();
        let (mut a, mut b) = (None, None);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(budgets.take(&mut a, &[1; 16]).unwrap()));
            assert!(seen.insert(budgets.take(&mut b, &[1; 16]).unwrap()));
        }
        let prefix = |l: &Option<Lease>| l.as_ref().map(|l| l.prefix());
        assert_eq!(prefix(&a), prefix(&b));
        let mut other = None;
        budgets.take(&mut other, &[2; 16]).unwrap();
        assert_ne!(prefix(&a), prefix(&other));
    }

    #[test]
    fn the_last_lease_gives_its_unused_numbers_back() {
        let budgets = GcmBudgets::default();
        let mut a = None;
        assert_eq!(budgets.take(&mut a, &[1; 16]).unwrap(), 0);
        drop(a);
        let mut b = None;
        assert_eq!(budgets.take(&mut b, &[1; 16]).unwrap(), 1, "reused");
        let mut c = None;
        assert_eq!(budgets.take(&mut c, &[1; 16]).unwrap(), 1 + RUN as u32);
        // b's run is not the last one handed out: its numbers stay spent.
        drop(b);
        let mut d = None;
        assert_eq!(budgets.take(&mut d, &[1; 16]).unwrap(), 1 + 2 * RUN as u32);
        // A session moving to another key gives its run back.
        drop(d);
        assert_eq!(budgets.take(&mut c, &[2; 16]).unwrap(), 0);
        let mut e = None;
        assert_eq!(budgets.take(&mut e, &[1; 16]).unwrap(), 2 + 2 * RUN as u32);
    }
}
