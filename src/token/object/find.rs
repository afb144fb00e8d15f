//! C_FindObjects*: DEKs and backend objects together. Results are collected
//! at C_FindObjectsInit; an empty template matches every object the session
//! may see.

use cryptoki_sys::*;

use crate::error::{Error, Result};
use crate::token::forward::forward;
use crate::token::kek_guard::is_dek_slot;
use crate::token::object::manage::backend_template;
use crate::token::object::template::Template;
use crate::token::session::calls::lookup;
use crate::token::session::table::Find;
use crate::vendor::{CKA_HSME_KEK_VERSION, CKA_HSME_ON_BACKEND};

pub fn init(h: CK_SESSION_HANDLE, t: &Template) -> Result<()> {
    let (m, s) = lookup(h)?;
    if s.ops()?.find.is_some() {
        return Err(Error::Rv(CKR_OPERATION_ACTIVE));
    }
    let mut handles = Vec::new();
    if is_dek_slot(&m, &s) {
        let user = m.is_user(s.slot);
        handles = crate::token::store_sync::search(&m, s.slot, t, user)?;
        for (oh, d) in m.objects.session_deks() {
            let st = d.state.read();
            if d.slot == s.slot
                && (user || !st.attrs.flag(CKA_PRIVATE))
                && crate::token::object::template::matches(&st.attrs, t)
            {
                handles.push(oh);
            }
        }
    }
    // Our vendor attributes mean nothing to the backend: such a search is ours only.
    if !t
        .iter()
        .any(|a| a.ty == CKA_HSME_KEK_VERSION || a.ty == CKA_HSME_ON_BACKEND)
    {
        // No short-lived key copy (made for key wrap) exists while we look.
        let _gate = m.envelope.as_ref().and_then(|e| e.temp_gate.search());
        let raw = backend_template(t);
        let found = forward(&m, &s, |bs| m.backend.find(bs, &raw))?;
        for bh in found {
            let identify = || crate::token::object::rebind::identify(&m, &s, bh);
            handles.push(m.objects.intern_backend(s.slot, bh, None, identify));
        }
    }
    s.ops()?.find = Some(Find { handles, pos: 0 });
    Ok(())
}

pub fn next(h: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>> {
    let (_, s) = lookup(h)?;
    let mut ops = s.ops()?;
    let f = ops
        .find
        .as_mut()
        .ok_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED))?;
    let end = f.pos.saturating_add(max).min(f.handles.len());
    let out = f
        .handles
        .get(f.pos..end)
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    f.pos = end;
    Ok(out)
}

pub fn finish(h: CK_SESSION_HANDLE) -> Result<()> {
    let (_, s) = lookup(h)?;
    let mut ops = s.ops()?;
    ops.find
        .take()
        .map(|_| ())
        .ok_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED))
}
