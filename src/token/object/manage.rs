//! Object management calls: create, copy, destroy, size, attributes. DEKs
//! are handled here; backend objects are forwarded with handles translated.

use std::sync::Arc;

use cryptoki_sys::*;

use crate::backend::{AttrIn, Mechanism};
use crate::error::{Error, Result};
use crate::hex::encode as hex;
use crate::token::forward::{forward, forward_objects};
use crate::token::kek_guard::{dek_here, is_kek, refuse_kek, refuse_kek_label};
use crate::token::module::Module;
use crate::token::object::dek::{self, Answer};
use crate::token::object::policy::{self, Origin};
use crate::token::object::rebind;
use crate::token::object::table::{Dek, DekState, Object};
use crate::token::object::template::{Attrs, Template};
use crate::token::session::calls::lookup;
use crate::token::session::table::Session;
use crate::vendor::CKA_HSME_ON_BACKEND;

/// An object handle resolved for a call on `s`.
pub enum Target {
    Dek(Arc<Dek>),
    Backend(CK_OBJECT_HANDLE),
}

pub fn resolve(m: &Module, s: &Session, h: CK_OBJECT_HANDLE) -> Result<Target> {
    match crate::token::store_sync::object(m, h)? {
        Object::Dek(d) => {
            drop(dek::visible(m, s, &d)?);
            Ok(Target::Dek(d))
        }
        // A session object made through this module died with the backend
        // session at a reconnect; its number may name another object now.
        Object::Backend {
            slot,
            owner: Some(_),
            checked,
            ..
        } if slot == s.slot && checked != m.objects.reconnects() => {
            m.objects.remove(h);
            Err(Error::Rv(CKR_OBJECT_HANDLE_INVALID))
        }
        Object::Backend {
            slot,
            handle,
            identity,
            checked,
            ..
        } if slot == s.slot => Ok(Target::Backend(rebind::current_handle(
            m,
            s,
            h,
            handle,
            identity.as_deref(),
            checked,
        ))),
        // Another slot's; `store_sync::object` loads `Stored` ones.
        Object::Backend { .. } | Object::Stored { .. } => Err(Error::Rv(CKR_OBJECT_HANDLE_INVALID)),
    }
}

/// The template as backend attributes (borrowing `t`), without our vendor
/// attributes.
pub fn backend_template(t: &Template) -> Vec<AttrIn<'_>> {
    t.iter()
        .filter(|a| a.ty != CKA_HSME_ON_BACKEND)
        .map(|a| AttrIn {
            ty: a.ty,
            value: &a.value,
        })
        .collect()
}

/// Our handle for an object the backend just made through session `s`.
/// Session objects are tied to `s`, so their handles die with it.
pub fn adopt(m: &Module, s: &Session, made: Result<CK_OBJECT_HANDLE>) -> Result<CK_OBJECT_HANDLE> {
    let bh = made?;
    let is_token = forward(m, s, |bs| m.backend.attribute_bool(bs, bh, CKA_TOKEN)).unwrap_or(false);
    let owner = if is_token { None } else { Some(s.handle) };
    let identify = || {
        if is_token {
            rebind::identify(m, s, bh)
        } else {
            None
        }
    };
    Ok(m.objects.intern_backend(s.slot, bh, owner, identify))
}

/// Backend handle for a key used by a forwarded operation (encrypt, sign,
/// verify, digest-key, derive). DEKs have no such backend operations, and
/// the KEK none at all (see `guard`).
pub fn backend_key(m: &Module, s: &Session, h: CK_OBJECT_HANDLE) -> Result<CK_OBJECT_HANDLE> {
    match resolve(m, s, h).map_err(|_| Error::Rv(CKR_KEY_HANDLE_INVALID))? {
        Target::Backend(b) if is_kek(m, s, b)? => Err(Error::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED)),
        Target::Backend(b) => Ok(b),
        Target::Dek(..) => Err(Error::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED)),
    }
}

pub fn create_object(h: CK_SESSION_HANDLE, t: &Template) -> Result<CK_OBJECT_HANDLE> {
    let (m, s) = lookup(h)?;
    if dek_here(&m, &s, "C_CreateObject", || policy::wants_dek(t, false))? {
        return dek::create(&m, &s, t, Origin::Imported, None);
    }
    refuse_kek_label(&m, &s, t)?;
    let raw = backend_template(t);
    let made = forward(&m, &s, |bs| m.backend.create_object(bs, &raw));
    adopt(&m, &s, made)
}

pub fn generate_key(
    h: CK_SESSION_HANDLE,
    mech: &Mechanism<'_>,
    t: &Template,
) -> Result<CK_OBJECT_HANDLE> {
    let (m, s) = lookup(h)?;
    if mech.kind() == CKM_AES_KEY_GEN
        && dek_here(&m, &s, "C_GenerateKey", || policy::wants_dek(t, true))?
    {
        return dek::create(&m, &s, t, Origin::Generated, None);
    }
    refuse_kek_label(&m, &s, t)?;
    let raw = backend_template(t);
    let made = forward(&m, &s, |bs| m.backend.generate_key(bs, mech, &raw));
    adopt(&m, &s, made)
}

pub fn generate_key_pair(
    h: CK_SESSION_HANDLE,
    mech: &Mechanism<'_>,
    public: &Template,
    private: &Template,
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
    let (m, s) = lookup(h)?;
    refuse_kek_label(&m, &s, public)?;
    refuse_kek_label(&m, &s, private)?;
    let (pu, pr) = (backend_template(public), backend_template(private));
    let (bpu, bpr) = forward(&m, &s, |bs| m.backend.generate_key_pair(bs, mech, &pu, &pr))?;
    let a = adopt(&m, &s, Ok(bpu))?;
    Ok((a, adopt(&m, &s, Ok(bpr))?))
}

pub fn copy_object(
    h: CK_SESSION_HANDLE,
    oh: CK_OBJECT_HANDLE,
    t: &Template,
) -> Result<CK_OBJECT_HANDLE> {
    let (m, s) = lookup(h)?;
    match resolve(&m, &s, oh)? {
        Target::Dek(d) => dek::copy(&m, &s, &d, t),
        Target::Backend(bh) => {
            refuse_kek(&m, &s, bh)?;
            refuse_kek_label(&m, &s, t)?;
            let raw = backend_template(t);
            let made = forward_objects(&m, &s, |bs| m.backend.copy_object(bs, bh, &raw));
            adopt(&m, &s, made)
        }
    }
}

pub fn destroy_object(h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE) -> Result<()> {
    let (m, s) = lookup(h)?;
    match resolve(&m, &s, oh)? {
        Target::Dek(d) => {
            let destroyable = dek::visible(&m, &s, &d)?.attrs.flag(CKA_DESTROYABLE);
            if d.is_token() && !s.is_rw() {
                return Err(Error::Rv(CKR_SESSION_READ_ONLY));
            }
            if !destroyable {
                return Err(Error::Rv(CKR_ACTION_PROHIBITED));
            }
            let env = m.envelope_for(d.slot)?;
            // A token DEK stays recoverable for the retention period.
            if d.is_token() {
                env.soft_delete(&d.id)?;
            } else {
                crate::log_info!("session DEK destroyed: id={}", hex(&d.id));
                env.log(
                    crate::audit::Entry::new(crate::audit::Op::DekDestroy, CKR_OK)
                        .key(&d.id, &[])
                        .detail("session"),
                );
            }
            m.objects.remove(oh);
            env.cache.remove(&d.id);
            Ok(())
        }
        Target::Backend(bh) => {
            refuse_kek(&m, &s, bh)?;
            forward_objects(&m, &s, |bs| m.backend.destroy_object(bs, bh))?;
            m.objects.remove(oh);
            Ok(())
        }
    }
}

pub fn object_size(h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE) -> Result<CK_ULONG> {
    let (m, s) = lookup(h)?;
    match resolve(&m, &s, oh)? {
        Target::Dek(d) => {
            let st = dek::visible(&m, &s, &d)?;
            Ok((st.record.len() + st.attrs.encode().len()) as CK_ULONG)
        }
        Target::Backend(bh) => forward_objects(&m, &s, |bs| m.backend.object_size(bs, bh)),
    }
}

/// What C_GetAttributeValue must do.
pub enum AttrStep {
    /// Forward the caller's template for this backend object.
    Forward(CK_OBJECT_HANDLE),
    /// One answer per requested type, in order.
    Answers(Vec<Answer>),
}

pub fn get_attributes(
    h: CK_SESSION_HANDLE,
    oh: CK_OBJECT_HANDLE,
    types: &[CK_ATTRIBUTE_TYPE],
) -> Result<AttrStep> {
    let (m, s) = lookup(h)?;
    match resolve(&m, &s, oh)? {
        Target::Backend(bh) => Ok(AttrStep::Forward(bh)),
        Target::Dek(d) => {
            let st = dek::visible(&m, &s, &d)?;
            Ok(AttrStep::Answers(
                types
                    .iter()
                    .map(|ty| dek::attribute(&m, &d, &st, *ty))
                    .collect(),
            ))
        }
    }
}

pub fn set_attributes(h: CK_SESSION_HANDLE, oh: CK_OBJECT_HANDLE, t: &Template) -> Result<()> {
    let (m, s) = lookup(h)?;
    match resolve(&m, &s, oh)? {
        Target::Backend(bh) => {
            refuse_kek(&m, &s, bh)?;
            refuse_kek_label(&m, &s, t)?;
            let raw = backend_template(t);
            forward_objects(&m, &s, |bs| m.backend.set_attributes(bs, bh, &raw))?;
            // Renamed: found again after a reconnect under its new name.
            if t.iter().any(|a| matches!(a.ty, CKA_LABEL | CKA_ID)) {
                m.objects.set_identity(oh, rebind::identify(&m, &s, bh));
            }
            Ok(())
        }
        Target::Dek(d) => set_dek_attributes(&m, &s, &d, t),
    }
}

/// Check and write under the DEK's write lock, so two concurrent calls
/// cannot undo a one-way change (CKA_SENSITIVE, CKA_EXTRACTABLE).
fn set_dek_attributes(m: &Module, s: &Session, d: &Dek, t: &Template) -> Result<()> {
    if d.is_token() && !s.is_rw() {
        return Err(Error::Rv(CKR_SESSION_READ_ONLY));
    }
    refuse_kek_label(m, s, t)?;
    let mut w = d.state.write();
    if w.attrs.flag(CKA_PRIVATE) && !m.is_user(s.slot) {
        return Err(Error::Rv(CKR_OBJECT_HANDLE_INVALID));
    }
    let new = policy::apply_set(&w.attrs, t)?;
    policy::check_export(&new, m.config.key_export, "C_SetAttributeValue")?;
    let env = m.envelope_for(d.slot)?;
    // Bound attributes changed: the record must be sealed again.
    let resealed = if new.bound_encoding() != w.attrs.bound_encoding() {
        let value = env.value(d.key_ref(&w))?;
        Some(env.seal(&d.id, &new, value.value())?)
    } else {
        None
    };
    let mut record = resealed.clone().unwrap_or_else(|| w.record.clone());
    let mut generation = w.generation;
    if d.is_token() {
        // Twice at most: the row may have been re-wrapped (same attributes,
        // newer record) since this process read it; then build on the
        // stored record. Any other change is someone else's: refuse.
        for attempt in 0..2 {
            let (kek_label, kek_version) = env.store_key(&record)?;
            let ok = env.with_store(|store| {
                Ok(store.update(
                    &d.id,
                    new.label(),
                    new.id(),
                    &new.encode(),
                    &record,
                    &kek_label,
                    kek_version,
                    Some(generation),
                )?)
            })?;
            if ok {
                generation += 1;
                break;
            }
            let row = env.with_store(|st| Ok(st.get(&d.id)?))?;
            match row {
                Some(row) if attempt == 0 && Attrs::decode(&row.attrs)? == w.attrs => {
                    generation = row.generation;
                    record = resealed.clone().unwrap_or(row.record);
                }
                // Another process changed the key meanwhile; the caller may retry.
                _ => return Err(Error::Rv(CKR_FUNCTION_FAILED)),
            }
        }
    }
    *w = DekState::new(new, record, generation);
    Ok(())
}
