//! Backend handles across an HSM reconnect. A network HSM that restarts or
//! fails over may give its objects new handles; the handle we hold for a
//! backend token object is then checked again before its next use and, if
//! needed, found again by what the object is (class, label, id, as read
//! when we first saw it). Exactly one match is taken; none or several leave
//! the old handle, and the call fails as it would have.

use cryptoki_sys::*;

use crate::backend::AttrIn;
use crate::token::forward::forward;
use crate::token::module::Module;
use crate::token::object::table::Identity;
use crate::token::session::Session;

/// What backend object `bh` is, for a token object (None for a session
/// object, or when the backend does not say).
pub fn identify(m: &Module, s: &Session, bh: CK_OBJECT_HANDLE) -> Option<Identity> {
    let types = [CKA_TOKEN, CKA_CLASS, CKA_LABEL, CKA_ID];
    let values = forward(m, s, |bs| m.backend.attributes(bs, bh, &types)).ok()?;
    let [token, class, label, id]: [Option<Vec<u8>>; 4] = values.try_into().ok()?;
    if token.as_deref() != Some(&[CK_TRUE][..]) {
        return None;
    }
    Some(Identity {
        class: class?,
        label: label.unwrap_or_default(),
        id: id.unwrap_or_default(),
    })
}

/// The backend handle to use now for our handle `h`, which named `handle`
/// when last checked at reconnect count `checked`.
pub fn current_handle(
    m: &Module,
    s: &Session,
    h: CK_OBJECT_HANDLE,
    handle: CK_OBJECT_HANDLE,
    identity: Option<&Identity>,
    checked: u64,
) -> CK_OBJECT_HANDLE {
    let now = m.objects.reconnects();
    if checked == now {
        return handle;
    }
    let Some(who) = identity else {
        // A session object (gone with its session) or one we cannot name:
        // the old handle stands or fails on its own.
        m.objects.rebind(h, handle, now);
        return handle;
    };
    let t = [
        AttrIn {
            ty: CKA_TOKEN,
            value: &[CK_TRUE],
        },
        AttrIn {
            ty: CKA_CLASS,
            value: &who.class,
        },
        AttrIn {
            ty: CKA_LABEL,
            value: &who.label,
        },
        AttrIn {
            ty: CKA_ID,
            value: &who.id,
        },
    ];
    match forward(m, s, |bs| m.backend.find(bs, &t)).as_deref() {
        Ok([one]) => {
            if *one != handle {
                crate::log_info!(
                    "object {h}: backend handle {handle} is now {one} after a reconnect"
                );
            }
            m.objects.rebind(h, *one, now);
            *one
        }
        Ok(found) => {
            crate::log_warn!(
                "object {h}: {} backend objects match it after a reconnect; keeping handle {handle}",
                found.len()
            );
            m.objects.rebind(h, handle, now);
            handle
        }
        // The backend is not answering: check again next time.
        Err(_) => handle,
    }
}
