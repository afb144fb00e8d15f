//! GCM invocations (issue 12). Every AES-GCM encryption under a DEK, by any
//! function, takes one *invocation number* of its key material (the key's
//! print, `crypto::KeyPrint`: two DEKs holding the same value, a copy or a
//! re-import, share one sequence). At `gcm_invocation_limit` numbers the
//! key is spent: further encryptions are refused with
//! `CKR_HSME_INVOCATION_LIMIT`, once logged to the audit log by each
//! process that meets it. Decryption takes no number.
//!
//! Numbers are handed out in three tiers, so that an encryption costs a
//! plain increment and the store sees one transaction per block:
//!
//! 1. the **store** (`StoreEngine::reserve_gcm`) grants each process
//!    *blocks* of a token DEK's numbers, one transaction each, never past
//!    the limit: the count holds across processes and hosts that share the
//!    store. Blocks start at 64 numbers and double up to
//!    `gcm_invocation_block`, so a short-lived process wastes little; a
//!    process that dies loses at most the rest of its block, and one that
//!    finalises gives the rest back when nobody reserved after it.
//!    Session DEKs (which die with their session) are counted in the
//!    process only: 0..limit, no store.
//! 2. the process's [`KeyBudget`] hands out *runs* of its block to
//!    sessions, under its mutex;
//! 3. each session holds a [`Lease`] on one run, under its own lock, so a
//!    number is a compare and an increment. A lease that ends (the session
//!    moves to another key, closes, logs out) gives the rest of its run
//!    back if it was the last run handed out.
//!
//! The numbers are also the counter field of the IVs the module makes
//! (`crypto::gcm_iv::counter`), after a random prefix drawn once per key
//! and process: for a token DEK on a shared store, no two encryptions
//! anywhere share a number, so no two counter IVs repeat whatever the
//! prefixes; the prefix keeps IVs apart where numbers could meet (session
//! DEKs in two processes, stores that are not shared).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Envelope;
use crate::audit::{Entry, Op};
use crate::crypto::KeyPrint;
use crate::error::{Error, Result};
use crate::hex::encode as hex;
use crate::runtime::lock::unpoisoned;
use crate::vendor::CKR_HSME_INVOCATION_LIMIT;

/// The first block a process reserves for a key; later ones double.
const FIRST_BLOCK: u64 = 64;
/// The longest run a lease takes at once.
const MAX_RUN: u64 = 256;

/// One key's numbers in this process.
pub struct KeyBudget {
    print: KeyPrint,
    /// Random, drawn once per key and process: the prefix of counter IVs.
    prefix: u128,
    /// Counted in the store (a token DEK's key material), or only here.
    stored: bool,
    block: Mutex<Block>,
    /// Token DEKs whose store row is known to name this key (`gcm_print`,
    /// for listings): each is marked once per process.
    marked: Mutex<Vec<[u8; 16]>>,
}

/// The numbers this process may still hand out: `next..end`.
struct Block {
    next: u64,
    end: u64,
    /// How many the next reservation asks for.
    size: u64,
    /// The limit was met: nothing more will come.
    spent: bool,
}

impl KeyBudget {
    pub fn print(&self) -> &KeyPrint {
        &self.print
    }
}

/// A run of invocation numbers, held by one session (under its lock), so
/// taking one is a compare and an increment.
pub struct Lease {
    budget: Arc<KeyBudget>,
    /// The DEK it last served (another DEK with the same key takes the
    /// slow path once, to be marked in the store).
    dek: [u8; 16],
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

    /// Whether this lease serves the DEK `id` with key `print` as it is.
    #[inline]
    pub fn serves(&self, print: &KeyPrint, id: &[u8; 16]) -> bool {
        self.budget.print == *print && self.dek == *id
    }
}

/// A lease ends: if its run is the last one its budget handed out, the
/// numbers it did not use go back, so that short operations waste nothing.
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

/// The DEK that asks for a number: for the store's listing (a token DEK's
/// id) and the audit line when the limit is met.
#[derive(Clone, Copy)]
pub struct Asker<'a> {
    pub id: &'a [u8; 16],
    /// A token DEK (counted in the store), or a session DEK.
    pub token: bool,
    pub label: &'a [u8],
    pub kek_version: u32,
}

/// Every key's budget in this process, by print, and the configured limit.
pub struct GcmBudgets {
    keys: Mutex<HashMap<KeyPrint, Arc<KeyBudget>>>,
    limit: u64,
    max_block: u64,
    run: u64,
    /// Most budgets kept (`cache_max_keys`): past it, stored budgets no
    /// session leases are let go, those with the fewest numbers left
    /// first. A budget let go loses the rest of its block, as a process
    /// that dies does (the numbers never come back, so none repeats).
    /// Session DEKs' budgets are never let go: their numbers live only
    /// here.
    max_keys: usize,
}

impl GcmBudgets {
    /// `limit` numbers per key; blocks of up to `max_block`; budgets of
    /// about `max_keys` keys kept.
    pub fn new(limit: u64, max_block: u64, max_keys: usize) -> GcmBudgets {
        let max_block = max_block.max(1);
        GcmBudgets {
            keys: Mutex::new(HashMap::new()),
            limit,
            max_block,
            run: (max_block / 4).clamp(1, MAX_RUN),
            max_keys: max_keys.max(16),
        }
    }

    /// Past `max_keys`: lets go of a sixteenth of them, the idle stored
    /// budgets with the fewest numbers left.
    fn let_go(&self, keys: &mut HashMap<KeyPrint, Arc<KeyBudget>>) {
        if keys.len() < self.max_keys {
            return;
        }
        let mut idle: Vec<(u64, KeyPrint)> = keys
            .values()
            .filter(|b| b.stored && Arc::strong_count(b) == 1)
            .filter_map(|b| {
                let block = unpoisoned(b.block.lock());
                // A spent key keeps its budget: it is met (and reported) once.
                (!block.spent).then(|| (block.end.saturating_sub(block.next), b.print))
            })
            .collect();
        let n = (self.max_keys / 16).max(1).min(idle.len());
        if n == 0 {
            return;
        }
        idle.select_nth_unstable(n - 1);
        for (_, print) in idle.into_iter().take(n) {
            keys.remove(&print);
        }
    }

    /// How many keys have a budget here (for tests).
    pub fn len(&self) -> usize {
        unpoisoned(self.keys.lock()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// A run of `block` for `lease`, and its first number (None: the block
    /// is used up).
    fn hand_run(&self, lease: &mut Lease, block: &mut Block) -> Option<u32> {
        if block.next >= block.end {
            return None;
        }
        let run = self.run.min(block.end - block.next);
        lease.next = block.next;
        lease.end = block.next + run;
        block.next += run;
        lease.take_local()
    }

    /// The number path of a key counted in this process only (no store), as
    /// session DEKs take it: the session's lease, then a run of the
    /// process's block. None once the key is spent here. Public for the
    /// side-by-side benchmark, which times the counting hot path with it.
    pub fn take_here(
        &self,
        slot: &mut Option<Lease>,
        print: &KeyPrint,
        dek: &[u8; 16],
    ) -> Option<u32> {
        let lease = match slot {
            Some(l) if l.budget.print == *print => l,
            _ => slot.insert(self.lease(print, false, dek)),
        };
        if let Some(n) = lease.take_local() {
            return Some(n);
        }
        let budget = lease.budget.clone();
        let mut block = unpoisoned(budget.block.lock());
        self.hand_run(lease, &mut block)
    }

    /// An empty lease on `print`'s budget (made on first use; a token DEK
    /// finding a budget kept only here replaces it with a stored one).
    fn lease(&self, print: &KeyPrint, token: bool, dek: &[u8; 16]) -> Lease {
        let mut keys = unpoisoned(self.keys.lock());
        let budget = match keys.get(print) {
            Some(b) if b.stored || !token => b.clone(),
            _ => {
                let mut prefix = [0u8; 16];
                // Counter IVs' uniqueness rests on the numbers; the prefix
                // only keeps apart what the numbers cannot (see above).
                if crate::crypto::gcm_iv::random_bytes(&mut prefix).is_err() {
                    crate::log_warn!("no random prefix for counter IVs; using zeros");
                }
                let b = Arc::new(KeyBudget {
                    print: *print,
                    prefix: u128::from_be_bytes(prefix),
                    stored: token,
                    block: Mutex::new(Block {
                        next: 0,
                        end: if token { 0 } else { self.limit },
                        size: FIRST_BLOCK.min(self.max_block),
                        spent: false,
                    }),
                    marked: Mutex::new(Vec::new()),
                });
                self.let_go(&mut keys);
                keys.insert(*print, b.clone());
                b
            }
        };
        Lease {
            budget,
            dek: *dek,
            next: 0,
            end: 0,
        }
    }
}

impl Envelope {
    /// The next GCM invocation number of the key `print` for `who`, from
    /// the session's lease in `slot` (made, or replaced when it is another
    /// key's). `CKR_HSME_INVOCATION_LIMIT` once the key is spent.
    pub fn gcm_invocation(
        &self,
        slot: &mut Option<Lease>,
        print: &KeyPrint,
        who: &Asker<'_>,
    ) -> Result<u32> {
        let lease = match slot {
            Some(l) if l.budget.print == *print && (l.budget.stored || !who.token) => l,
            // The old lease (if any) gives its unused numbers back.
            _ => slot.insert(self.gcm.lease(print, who.token, who.id)),
        };
        lease.dek = *who.id;
        let n = match lease.take_local() {
            Some(n) => Ok(n),
            None => self.gcm_refill(lease, who),
        };
        // After the refill, whose reservation marks the asker itself.
        self.gcm_mark(&lease.budget, who);
        n
    }

    /// Record on `who`'s store row that it holds this budget's key, once
    /// per DEK and process (its first reservation does it too). Only for
    /// listings: a failure is not the encryption's.
    fn gcm_mark(&self, budget: &KeyBudget, who: &Asker<'_>) {
        if !budget.stored || !who.token {
            return;
        }
        let mut marked = unpoisoned(budget.marked.lock());
        if marked.contains(who.id) {
            return;
        }
        let now = crate::clock::unix_secs();
        let limit = self.gcm.limit;
        match self
            .with_store(|st| Ok(st.reserve_gcm(&budget.print, Some(who.id), 0, limit, now)?))
        {
            Ok(_) => marked.push(*who.id),
            Err(e) => crate::log_debug!("GCM count not recorded on DEK {}: {e}", hex(who.id)),
        }
    }

    /// A new run for `lease` from its key's budget (reserving a block in
    /// the store first if the budget is empty), and its first number.
    fn gcm_refill(&self, lease: &mut Lease, who: &Asker<'_>) -> Result<u32> {
        let budget = lease.budget.clone();
        let mut block = unpoisoned(budget.block.lock());
        if block.next >= block.end {
            if !block.spent && budget.stored {
                let asked = block.size;
                let limit = self.gcm.limit;
                let token_id = who.token.then_some(who.id);
                let now = crate::clock::unix_secs();
                let r = self.with_store(|st| {
                    Ok(st.reserve_gcm(&budget.print, token_id, asked, limit, now)?)
                })?;
                block.next = r.start;
                block.end = r.start.saturating_add(r.granted);
                block.size = asked.saturating_mul(2).min(self.gcm.max_block);
                if let Some(id) = token_id {
                    let mut marked = unpoisoned(budget.marked.lock());
                    if !marked.contains(id) {
                        marked.push(*id);
                    }
                }
            }
            if block.next >= block.end {
                let first = !block.spent;
                block.spent = true;
                drop(block);
                if first {
                    self.gcm_spent(&budget, who);
                }
                return Err(Error::Rv(CKR_HSME_INVOCATION_LIMIT));
            }
        }
        let n = self.gcm.hand_run(lease, &mut block);
        drop(block);
        n.ok_or(Error::Rv(CKR_HSME_INVOCATION_LIMIT))
    }

    /// The key met its limit: say so, once per process.
    fn gcm_spent(&self, budget: &KeyBudget, who: &Asker<'_>) {
        crate::log_warn!(
            "DEK {}: its AES-GCM invocation limit ({}) is reached{}; further encryptions under its key are refused (CKR_HSME_INVOCATION_LIMIT)",
            hex(who.id),
            self.gcm.limit,
            if budget.stored { "" } else { " in this process" }
        );
        self.log(
            Entry::new(Op::GcmLimit, CKR_HSME_INVOCATION_LIMIT)
                .key(who.id, who.label)
                .kek_version(who.kek_version)
                .count(self.gcm.limit)
                .detail("AES-GCM invocation limit reached"),
        );
    }

    /// At C_Finalize: give the unused end of each stored block back to the
    /// store, where nobody reserved after it. Failures cost only numbers.
    pub(super) fn gcm_give_back(&self) {
        let budgets: Vec<Arc<KeyBudget>> = unpoisoned(self.gcm.keys.lock())
            .values()
            .filter(|b| b.stored)
            .cloned()
            .collect();
        let now = crate::clock::unix_secs();
        for b in budgets {
            let mut block = unpoisoned(b.block.lock());
            if block.next >= block.end {
                continue;
            }
            let (from, to) = (block.next, block.end);
            match self.with_store(|st| Ok(st.return_gcm(&b.print, from, to, now)?)) {
                Ok(true) => block.end = block.next,
                Ok(false) => {}
                Err(e) => crate::log_debug!("GCM numbers not given back: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(budgets: &GcmBudgets, slot: &mut Option<Lease>, print: &KeyPrint) -> Option<u32> {
        budgets.take_here(slot, print, &[0; 16])
    }

    #[test]
    fn past_the_bound_idle_stored_budgets_are_let_go() {
        let budgets = GcmBudgets::new(1 << 32, 1 << 16, 16);
        // A session DEK's budget, and a token DEK's a session leases.
        let mut session = Some(budgets.lease(&[200; 16], false, &[0; 16]));
        let leased = budgets.lease(&[201; 16], true, &[1; 16]);
        drop(session.take());
        for n in 0..100u8 {
            drop(budgets.lease(&[n; 16], true, &[n; 16]));
        }
        assert!(budgets.len() <= 17, "{} kept", budgets.len());
        let keys = unpoisoned(budgets.keys.lock());
        assert!(keys.contains_key(&[200; 16]), "session DEKs' stay");
        assert!(keys.contains_key(&[201; 16]), "a leased one stays");
        drop(keys);
        drop(leased);
    }

    #[test]
    fn leases_on_one_key_never_share_a_number() {
        let budgets = GcmBudgets::new(1 << 32, 1 << 16, usize::MAX);
        let (mut a, mut b) = (None, None);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(local(&budgets, &mut a, &[1; 16]).unwrap()));
            assert!(seen.insert(local(&budgets, &mut b, &[1; 16]).unwrap()));
        }
        let prefix = |l: &Option<Lease>| l.as_ref().map(|l| l.prefix());
        assert_eq!(prefix(&a), prefix(&b));
        let mut other = None;
        local(&budgets, &mut other, &[2; 16]).unwrap();
        assert_ne!(prefix(&a), prefix(&other));
    }

    #[test]
    fn the_last_lease_gives_its_unused_numbers_back() {
        let budgets = GcmBudgets::new(1 << 32, 1 << 16, usize::MAX);
        let run = budgets.run as u32;
        let mut a = None;
        assert_eq!(local(&budgets, &mut a, &[1; 16]), Some(0));
        drop(a);
        let mut b = None;
        assert_eq!(local(&budgets, &mut b, &[1; 16]), Some(1), "reused");
        let mut c = None;
        assert_eq!(local(&budgets, &mut c, &[1; 16]), Some(1 + run));
        // b's run is not the last one handed out: its numbers stay spent.
        drop(b);
        let mut d = None;
        assert_eq!(local(&budgets, &mut d, &[1; 16]), Some(1 + 2 * run));
    }

    #[test]
    fn runs_are_a_quarter_block_up_to_256() {
        assert_eq!(GcmBudgets::new(1000, 50, usize::MAX).run, 12);
        assert_eq!(GcmBudgets::new(1000, 1, usize::MAX).run, 1);
        assert_eq!(GcmBudgets::new(1 << 32, 1 << 16, usize::MAX).run, 256);
    }
}
