//! Token DEKs live in the shared store; this process holds the ones it has
//! found or made, and keeps them in step with the store.
//!
//! - A search asks the store ([`search`]): a template naming an indexed
//!   attribute (CKA_LABEL, CKA_ID, CKA_UNIQUE_ID) is one indexed query; one
//!   that no stored DEK can match (another class or key type, CKA_TOKEN
//!   false) asks nothing; the others walk the store a page at a time. So a
//!   DEK made by another process is found here, and nothing is mirrored.
//! - The change feed ([`catch_up`]) tells which held DEKs another process
//!   destroyed or changed, at each search and before a held DEK is used
//!   once the feed is due.

use std::sync::Arc;

use cryptoki_sys::*;

use crate::envelope::feed::News;
use crate::error::{Error, Result};
use crate::store::{DekQuery, DekRow};
use crate::token::module::Module;
use crate::token::object::table::{Dek, DekState, Object};
use crate::token::object::template::{find_in, matches, Attrs, Template};

pub fn dek_from_row(slot: usize, row: &DekRow) -> Result<Arc<Dek>> {
    Ok(Arc::new(Dek::new(
        row.id,
        slot,
        None,
        DekState::new(
            Attrs::decode(&row.attrs)?,
            row.record.clone(),
            row.generation,
        ),
    )))
}

/// Which stored token DEKs a search template can match.
#[derive(Debug, PartialEq, Eq)]
pub enum StoredMatch {
    /// None: it names another class, key type or `CKA_TOKEN` false.
    Nothing,
    /// Those one indexed query finds (a superset: the template filters them).
    Query(DekQuery),
    /// Any: it names no indexed attribute.
    All,
}

/// What `t` asks of the store. Every stored DEK is a token AES secret key,
/// so a template that says otherwise cannot match one.
pub fn stored_match(t: &Template) -> StoredMatch {
    let mut stored = Attrs::default();
    stored.set_ulong(CKA_CLASS, CKO_SECRET_KEY);
    stored.set_ulong(CKA_KEY_TYPE, CKK_AES);
    stored.set_bool(CKA_TOKEN, true);
    for ty in [CKA_CLASS, CKA_KEY_TYPE, CKA_TOKEN] {
        if find_in(t, ty).is_some_and(|v| stored.get(ty) != Some(v)) {
            return StoredMatch::Nothing;
        }
    }
    // CKA_UNIQUE_ID is the hex of the row id.
    let id = match find_in(t, CKA_UNIQUE_ID) {
        None => None,
        Some(v) => match std::str::from_utf8(v)
            .ok()
            .and_then(crate::hex::decode)
            .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        {
            Some(id) => Some(id),
            None => return StoredMatch::Nothing,
        },
    };
    let query = DekQuery {
        id,
        label: find_in(t, CKA_LABEL).map(<[u8]>::to_vec),
        ckaid: find_in(t, CKA_ID).map(<[u8]>::to_vec),
    };
    if query.is_empty() {
        StoredMatch::All
    } else {
        StoredMatch::Query(query)
    }
}

/// Rows per page when a search walks every stored DEK.
const PAGE: u32 = 1000;

/// The token DEKs a search with template `t` finds for a session of `slot`
/// (`user`: the normal user is logged in), as handles: from the store,
/// never from what this process happens to hold. Rows named by an indexed
/// attribute are one indexed query; a template naming none walks the store
/// a page at a time. A row already held keeps its object (or gives it its
/// newer state); a new one is held from now on (with a handle that stays
/// stable and is never reused). The feed is read first and the rows are
/// held under the feed lock, so a change made meanwhile elsewhere is not
/// lost between the read of a row and its holding.
pub fn search(m: &Module, slot: usize, t: &Template, user: bool) -> Result<Vec<CK_OBJECT_HANDLE>> {
    let (Some(dek_slot), Some(env)) = (m.dek_slot, m.envelope.as_ref()) else {
        return Ok(Vec::new());
    };
    if dek_slot != slot {
        return Ok(Vec::new());
    }
    let query = match stored_match(t) {
        StoredMatch::Nothing => return Ok(Vec::new()),
        StoredMatch::Query(q) => Some(q),
        StoredMatch::All => None,
    };
    let mut lock = env.feed_lock();
    // Destroyed or changed elsewhere: gone or changed here first.
    lock.read(true, |news| apply(m, slot, news))?;
    let mut found = Vec::new();
    let mut take = |rows: Vec<DekRow>| {
        for row in &rows {
            if let Some(h) = hold(m, slot, row, t, user) {
                found.push(h);
            }
        }
    };
    match query {
        Some(q) => take(env.with_store(|s| Ok(s.find(&q)?))?),
        None => {
            let mut after = None;
            loop {
                let page = env.with_store(|s| Ok(s.list_page(after.as_ref(), PAGE)?))?;
                let last = page.len() < PAGE as usize;
                after = page.last().map(|r| r.id);
                take(page);
                if last {
                    break;
                }
            }
        }
    }
    drop(lock);
    Ok(found)
}

/// Our handle for `row` if it matches `t` and the session may see it,
/// holding it (or its newer state) from now on. Under the feed lock.
fn hold(
    m: &Module,
    slot: usize,
    row: &DekRow,
    t: &Template,
    user: bool,
) -> Option<CK_OBJECT_HANDLE> {
    if let Some((h, d)) = m.objects.token_dek(&row.id) {
        let st = d.state.read();
        // States only move forward: an older row never replaces a newer one.
        if st.generation >= row.generation {
            return (visible(&st.attrs, user) && matches(&st.attrs, t)).then_some(h);
        }
    }
    let dek = match dek_from_row(slot, row) {
        Ok(d) => d,
        Err(_) => {
            crate::log_warn!(
                "DEK {} has unreadable attributes; skipped",
                crate::hex::encode(&row.id)
            );
            return None;
        }
    };
    let shown = {
        let st = dek.state.read();
        visible(&st.attrs, user) && matches(&st.attrs, t)
    };
    // A held DEK takes its newer state whether or not this search shows
    // it; one let go (`Stored`) is simply read again at its next use.
    if shown || m.objects.token_dek(&row.id).is_some() {
        let h = m.objects.intern_dek(dek);
        return shown.then_some(h);
    }
    None
}

fn visible(attrs: &Attrs, user: bool) -> bool {
    user || !attrs.flag(CKA_PRIVATE)
}

/// Brings the token DEKs held here up to date with the store's change feed
/// when it is due (see `envelope::feed`): one destroyed elsewhere loses its
/// handle (`CKR_OBJECT_HANDLE_INVALID`, `CKR_KEY_HANDLE_INVALID` from then
/// on), one changed elsewhere takes its new attributes and record. With
/// `must`, read it whether due or not.
pub fn catch_up(m: &Module, must: bool) -> Result<()> {
    let (Some(slot), Some(env)) = (m.dek_slot, m.envelope.as_ref()) else {
        return Ok(());
    };
    if !must && !env.feed_due() {
        return Ok(());
    }
    if !must && !m.objects.holds_token_deks() {
        env.feed_idle();
        return Ok(());
    }
    env.feed_lock().read(must, |news| apply(m, slot, news))
}

/// What the feed says, applied to what is held (under the feed lock).
fn apply(m: &Module, slot: usize, news: News) -> Result<()> {
    let Some(env) = m.envelope.as_ref() else {
        return Ok(());
    };
    let ids = match news {
        News::Rows(ids) => ids,
        News::Everything => m.objects.token_dek_ids(),
    };
    for id in ids {
        let held = m.objects.token_dek(&id);
        // Not held with its state: a let-go handle reads its row again at
        // its next use; only a cached value may need to go.
        if held.is_none() && !env.cache.contains(&id) {
            continue;
        }
        match env.with_store(|s| Ok(s.get(&id)?))? {
            None => {
                if let Some((h, _)) = held {
                    m.objects.remove(h);
                }
                env.cache.remove(&id);
            }
            Some(row) => {
                if let Some((_, d)) = held {
                    if row.generation > d.state.read().generation {
                        intern_row(m, slot, &row)
                    }
                }
            }
        }
    }
    Ok(())
}

/// Object `h`, after the DEKs held were brought up to date (when due, and
/// only when `h` is a token DEK: the feed does not gate other objects); a
/// token DEK whose state was let go is read from the store again under its
/// handle (gone from there: its handle goes, `CKR_OBJECT_HANDLE_INVALID`).
pub fn object(m: &Module, h: CK_OBJECT_HANDLE) -> Result<Object> {
    let token_dek = |o: &Object| match o {
        Object::Dek(d) => d.is_token(),
        Object::Stored { .. } => true,
        Object::Backend { .. } => false,
    };
    let first = m.objects.get(h)?;
    if !token_dek(&first) {
        return Ok(first);
    }
    catch_up(m, false)?;
    match m.objects.get(h)? {
        Object::Dek(d) => {
            m.objects.touch(&d);
            Ok(Object::Dek(d))
        }
        Object::Stored { id, slot, .. } => reload(m, h, id, slot),
        backend => Ok(backend),
    }
}

/// Handle `h`'s DEK, let go before, read from the store again and held
/// under `h` (if `h` still names it), under the feed lock.
fn reload(m: &Module, h: CK_OBJECT_HANDLE, id: [u8; 16], slot: usize) -> Result<Object> {
    let env = m
        .envelope
        .as_ref()
        .ok_or(Error::Rv(CKR_OBJECT_HANDLE_INVALID))?;
    let _lock = env.feed_lock();
    let Some(row) = env.with_store(|s| Ok(s.get(&id)?))? else {
        m.objects.remove(h);
        env.cache.remove(&id);
        return Err(Error::Rv(CKR_OBJECT_HANDLE_INVALID));
    };
    let dek = dek_from_row(slot, &row)?;
    // Another thread may have reloaded it first, or the handle may have
    // gone meanwhile (a destroy, a logout).
    m.objects.load_stored(h, dek)
}

/// Holds `row` as a DEK here (a new handle, or the held one's new state).
fn intern_row(m: &Module, slot: usize, row: &DekRow) {
    match dek_from_row(slot, row) {
        Ok(dek) => {
            m.objects.intern_dek(dek);
        }
        Err(_) => crate::log_warn!(
            "DEK {} has unreadable attributes; skipped",
            crate::hex::encode(&row.id)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::object::template::TemplateAttr;
    use zeroize::Zeroizing;

    fn t(attrs: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> Template {
        attrs
            .iter()
            .map(|(ty, v)| TemplateAttr {
                ty: *ty,
                value: Zeroizing::new(v.clone()),
            })
            .collect()
    }

    fn ulong(v: CK_ULONG) -> Vec<u8> {
        crate::token::object::template::ulong_bytes(v)
    }

    #[test]
    fn templates_become_indexed_queries() {
        let q = |id: Option<[u8; 16]>, label: Option<&[u8]>, ckaid: Option<&[u8]>| {
            StoredMatch::Query(DekQuery {
                id,
                label: label.map(<[u8]>::to_vec),
                ckaid: ckaid.map(<[u8]>::to_vec),
            })
        };
        assert_eq!(stored_match(&t(&[])), StoredMatch::All);
        assert_eq!(
            stored_match(&t(&[
                (CKA_CLASS, ulong(CKO_SECRET_KEY)),
                (CKA_KEY_TYPE, ulong(CKK_AES)),
                (CKA_TOKEN, vec![1]),
                (CKA_ENCRYPT, vec![1]),
            ])),
            StoredMatch::All
        );
        assert_eq!(
            stored_match(&t(&[(CKA_LABEL, b"x".to_vec())])),
            q(None, Some(b"x"), None)
        );
        assert_eq!(
            stored_match(&t(&[
                (CKA_CLASS, ulong(CKO_SECRET_KEY)),
                (CKA_ID, vec![1]),
                (CKA_LABEL, vec![]),
            ])),
            q(None, Some(b""), Some(&[1]))
        );
        let id = [0xAB; 16];
        assert_eq!(
            stored_match(&t(&[(CKA_UNIQUE_ID, crate::hex::encode(&id).into_bytes())])),
            q(Some(id), None, None)
        );
    }

    #[test]
    fn templates_no_stored_dek_can_match_ask_nothing() {
        for template in [
            t(&[
                (CKA_CLASS, ulong(CKO_CERTIFICATE)),
                (CKA_LABEL, b"x".to_vec()),
            ]),
            t(&[(CKA_CLASS, ulong(CKO_PRIVATE_KEY))]),
            t(&[(CKA_KEY_TYPE, ulong(CKK_RSA))]),
            t(&[(CKA_TOKEN, vec![0])]),
            t(&[(CKA_UNIQUE_ID, b"not hex".to_vec())]),
            t(&[(CKA_UNIQUE_ID, b"abcd".to_vec())]),
        ] {
            assert_eq!(stored_match(&template), StoredMatch::Nothing);
        }
    }
}
