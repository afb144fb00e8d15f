//! Keeps this process's view of token DEKs in step with the shared store, so
//! a DEK made by another process is found here, and one it destroyed is gone.
//!
//! A search whose template names an indexed attribute (CKA_LABEL, CKA_ID,
//! CKA_UNIQUE_ID) asks the store for those rows only
//! ([`sync_for_search`]); one that no stored DEK can match (another class or
//! key type, CKA_TOKEN false) asks nothing; only the others list every row.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cryptoki_sys::*;

use crate::error::Result;
use crate::runtime::stamped::Stamped;
use crate::store::{DekQuery, DekRow};
use crate::token::module::Module;
use crate::token::object::table::{Dek, DekState};
use crate::token::object::template::{find_in, matches, Attrs, Template};

pub fn dek_from_row(slot: usize, row: &DekRow) -> Result<Arc<Dek>> {
    Ok(Arc::new(Dek {
        id: row.id,
        slot,
        owner: None,
        state: Stamped::new(DekState::new(
            Attrs::decode(&row.attrs)?,
            row.record.clone(),
            row.generation,
        )),
    }))
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

/// Brings what a search with template `t` can find up to date: the rows one
/// indexed query returns, and the DEKs held here that match `t` (each
/// looked up by id if the query did not return it: destroyed or changed
/// elsewhere). Falls back to [`sync_token_deks`] when `t` names no indexed
/// attribute.
pub fn sync_for_search(m: &Module, t: &Template) -> Result<()> {
    let query = match stored_match(t) {
        StoredMatch::Nothing => return Ok(()),
        StoredMatch::All => return sync_token_deks(m),
        StoredMatch::Query(q) => q,
    };
    let (Some(slot), Some(env)) = (m.dek_slot, m.envelope.as_ref()) else {
        return Ok(());
    };
    let rows = env.with_store(|s| Ok(s.find(&query)?))?;
    let mut held: HashMap<[u8; 16], (CK_OBJECT_HANDLE, i64, bool)> = HashMap::new();
    for (h, d) in m.objects.deks() {
        if d.is_token() {
            let st = d.state.read();
            held.insert(d.id, (h, st.generation, matches(&st.attrs, t)));
        }
    }
    let found: HashSet<[u8; 16]> = rows.iter().map(|r| r.id).collect();
    for row in &rows {
        // New here, or changed since this process read it.
        if held
            .get(&row.id)
            .is_none_or(|(_, g, _)| *g != row.generation)
        {
            intern_row(m, slot, row);
        }
    }
    for (id, (h, _, matched)) in held {
        if !matched || found.contains(&id) {
            continue;
        }
        match env.with_store(|s| Ok(s.get(&id)?))? {
            Some(row) => intern_row(m, slot, &row),
            None => {
                m.objects.remove(h);
                env.cache.remove(&id);
            }
        }
    }
    Ok(())
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

pub fn sync_token_deks(m: &Module) -> Result<()> {
    let (Some(slot), Some(env)) = (m.dek_slot, m.envelope.as_ref()) else {
        return Ok(());
    };
    let rows = env.with_store(|s| Ok(s.list_ids_generations()?))?;
    let mut known: HashMap<[u8; 16], (cryptoki_sys::CK_OBJECT_HANDLE, i64)> = HashMap::new();
    for (h, d) in m.objects.deks() {
        if d.is_token() {
            let gen = d.state.read().generation;
            known.insert(d.id, (h, gen));
        }
    }
    for (id, gen) in &rows {
        if known.remove(id).is_some_and(|(_, g)| g == *gen) {
            continue;
        }
        let Some(row) = env.with_store(|s| Ok(s.get(id)?))? else {
            continue;
        };
        intern_row(m, slot, &row);
    }
    // What is left was destroyed elsewhere.
    for (id, (h, _)) in known {
        m.objects.remove(h);
        env.cache.remove(&id);
    }
    Ok(())
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
