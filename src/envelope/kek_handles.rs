//! The KEK on the members: work with a KEK version on the first member
//! that answers (each member's handles and time-out are in `member_kek`).

use super::member_kek::timed;
use super::members::Member;
use super::service::Envelope;
use crate::backend::kek::KekKey;
use crate::backend::Backend;
use crate::error::Result;

impl Envelope {
    /// Run `f` with KEK version `version` on a pooled backend session of
    /// the first member that answers (see `members`), under the member's
    /// time-out: `f` owns what it uses.
    pub(super) fn with_kek<T, F>(&self, version: u32, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Member, &Backend, &cryptoki::session::Session, KekKey) -> Result<T>
            + Clone
            + Send
            + 'static,
    {
        self.on_members(|m| {
            let f = f.clone();
            timed(m, move |m| m.with_kek(version, |b, s, key| f(m, b, s, key)))
        })
    }

    /// The backend objects of a KEK version on the main member.
    pub(super) fn kek_handle(
        &self,
        s: &cryptoki::session::Session,
        version: u32,
    ) -> Result<KekKey> {
        self.members.main().kek_handle(s, version)
    }

    pub fn forget_keks(&self) {
        for m in self.members.all() {
            m.forget_keks();
        }
    }
}
